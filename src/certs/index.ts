export { SecretBox } from './secret-box.js';
export { DataplaneTokens, type DataplaneIdentity, type IssuedToken } from './tokens.js';
