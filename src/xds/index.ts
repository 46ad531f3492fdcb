export { TypeUrl, ANY, type ResourceSet } from './type-urls.js';
export { PROXYLESS_LABEL, isProxyless, type MeshContext } from './context.js';
export { generateProxyConfig, reachOf, GenerationError } from './generate.js';
export { meshServices, serviceVips, type ServiceInfo, type Endpoint } from './services.js';
export * from './names.js';
