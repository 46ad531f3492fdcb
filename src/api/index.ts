export { buildApi, type ApiOptions } from './server.js';
export { createDiagnosticsServer, type DiagnosticsOptions } from './diagnostics.js';
