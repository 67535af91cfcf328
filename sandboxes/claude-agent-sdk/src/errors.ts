// The one error type the HTTP layer maps to a status.

/** HttpError is an error with the HTTP status the API answers it with. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}
