export { TypeUrl, ANY, type ResourceSet } from './type-urls.js';
export { PROXYLESS_LABEL, isProxyless, type MeshContext } from './context.js';
export { generateProxyConfig, reachOf, serviceEndpoints, GenerationError, MESH_CA_SECRET } from './generate.js';
