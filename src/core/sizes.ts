/** A byte count for people, in decimal units: "1.2 MB", "34 KB" (at least 1 KB for any bytes). */
export function humanBytes(bytes: number): string {
  return bytes >= 1_000_000 ? `${(bytes / 1_000_000).toFixed(1)} MB` : `${Math.ceil(bytes / 1000)} KB`;
}
