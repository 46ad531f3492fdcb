export { SecretBox } from './secret-box.js';
export { checkSecretsKey } from './key-check.js';
export { DataplaneTokens, type DataplaneIdentity, type IssuedToken } from './tokens.js';
export { MeshCertificates, type IssuedCertificate } from './mesh-ca.js';
export { createKeyAndCsr, createRootCa, createServingCertificate, readCsr, signWorkloadCertificate, type CaMaterial } from './x509.js';
