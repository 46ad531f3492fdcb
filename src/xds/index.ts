export { TypeUrl, ANY, joinShared, splitOf, type ResourceSet } from './type-urls.js';
export { PROXYLESS_LABEL, isProxyless, LastingMemo, type MeshContext } from './context.js';
export { directAccessShape, generateProxyConfig, reachOf, withEndpoints, GenerationError } from './generate.js';
export { meshServices, servicesShape, serviceVips, type ServiceInfo, type Endpoint } from './services.js';
export * from './names.js';
