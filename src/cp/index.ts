export { startControlPlane, type ControlPlane } from './control-plane.js';
export { loadConfig, configSchema, ENV_VARS, CONFIG_FILE_ENV, type Config } from './config.js';
export { ensureAdminToken, isLoopback, ADMIN_TOKEN_FILE } from './admin-token.js';
export { xdsServingMaterial } from './xds-tls.js';
