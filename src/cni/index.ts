export * from './rules.js';
export * from './config.js';
export { Iptables, detectBackend, type Backend } from './iptables.js';
export { installTransparentProxy, uninstallTransparentProxy, checkTransparentProxy, type InstallOptions } from './transparent-proxy.js';
export { verifyRedirection } from './verify.js';
