/**
 * The one error catalogue. Every error that reaches an API response or CLI output carries one of
 * these codes. Codes are stable: clients match on `code`, never on `message`.
 * `docs/errors.md` documents each one; a test keeps the two in step.
 */
export const ERROR_CATALOGUE = {
  invalid_resource: { status: 400, summary: 'The resource failed validation; see violations.' },
  unknown_type: { status: 400, summary: 'The resource type is not one this control plane knows.' },
  malformed_body: { status: 400, summary: 'The request body is not valid JSON or YAML.' },
  mesh_not_found: { status: 404, summary: 'The resource names a mesh that does not exist.' },
  not_found: { status: 404, summary: 'No resource with that type, mesh and name exists.' },
  already_exists: { status: 409, summary: 'A resource with that type, mesh and name already exists.' },
  version_conflict: { status: 409, summary: 'The resource changed since the version the update was based on.' },
  payload_too_large: { status: 413, summary: 'The request body is larger than the configured limit.' },
  unsupported_media_type: { status: 415, summary: 'The request body is neither JSON nor YAML.' },
  unauthorized: { status: 401, summary: 'The request needs a valid admin token (or, for a certificate, dataplane token).' },
  forbidden: { status: 403, summary: 'The credentials are valid but do not allow this (a CSR for an identity the dataplane does not have).' },
  mtls_not_enabled: { status: 409, summary: 'The mesh has no enabled mTLS backend, so no certificate can be issued.' },
  invalid_config: { status: 500, summary: 'The control plane configuration is invalid.' },
  store_unavailable: { status: 503, summary: 'The resource store cannot be reached.' },
  internal: { status: 500, summary: 'An unexpected error; the log has details.' },
} as const satisfies Record<string, { status: number; summary: string }>;

export type ErrorCode = keyof typeof ERROR_CATALOGUE;

/** One violated rule, with the path of the offending field (`networking.inbound[0].port`). */
export interface Violation {
  field: string;
  message: string;
}

export class WeftError extends Error {
  readonly code: ErrorCode;
  readonly violations: readonly Violation[];
  /** Position of the failing item in a batch write, when the error comes from one. */
  index?: number;

  constructor(code: ErrorCode, message: string, violations: readonly Violation[] = [], options?: ErrorOptions) {
    super(message, options);
    this.name = 'WeftError';
    this.code = code;
    this.violations = violations;
  }

  get status(): number {
    return ERROR_CATALOGUE[this.code].status;
  }

  /** The JSON body of an API error response. */
  toJSON(): { code: ErrorCode; message: string; violations: Violation[] } {
    return { code: this.code, message: this.message, violations: [...this.violations] };
  }
}

export function isWeftError(err: unknown, code?: ErrorCode): err is WeftError {
  return err instanceof WeftError && (code === undefined || err.code === code);
}
