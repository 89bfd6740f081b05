//! How a request fails, as the pipeline decides on it: where the failure came from (the client,
//! the endpoint, or the proxy's own limits) and whether another try may follow.

use sluice_shared::model::RetryOn;

use crate::http::codec::{BodyTooLarge, ClientBodyError};
use crate::http::errors::ProxyError;
use crate::http::upstream::UpstreamError;
use crate::table::{RetryPolicy, RouteEntry};

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: its body broke or went past its limit. Never counted against an endpoint.
    Downstream,
    /// The endpoint: no connection, a reset, a timeout, a 5xx, a refused stream.
    Upstream,
    /// The proxy's own limits (circuit breaker, endpoints full, no endpoint to pick).
    Internal,
}

/// A failure that ends the request: its answer, and whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub error: ProxyError,
    pub side: Side,
    /// The client's connection closes after the answer (the rest of its body is unread).
    pub close: bool,
}

impl Failure {
    pub fn new(side: Side, error: ProxyError) -> Failure {
        Failure { error, side, close: false }
    }

    fn closing(side: Side, error: ProxyError) -> Failure {
        Failure { error, side, close: true }
    }
}

/// Why one try failed, for the retry decision: always the endpoint's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryFailure {
    /// No connection: nothing reached the endpoint.
    Connect,
    /// The endpoint closed or broke the connection before a response.
    Reset,
    /// The per-try timeout passed.
    Timeout,
    Status5xx,
    /// An HTTP/2 endpoint refused the stream unprocessed (GOAWAY, REFUSED_STREAM).
    Refused,
}

impl TryFailure {
    pub fn retried_by(self, policy: &RetryPolicy) -> bool {
        match self {
            TryFailure::Connect => policy.retries_on(RetryOn::ConnectFailure),
            TryFailure::Reset => policy.retries_on(RetryOn::Reset),
            TryFailure::Timeout => policy.retries_on(RetryOn::Reset) || policy.retries_on(RetryOn::Status5xx),
            TryFailure::Status5xx => policy.retries_on(RetryOn::Status5xx),
            TryFailure::Refused => policy.retries_on(RetryOn::ConnectFailure) || policy.retries_on(RetryOn::Reset),
        }
    }

    /// The answer when no try follows.
    pub fn failure(self) -> Failure {
        let error = match self {
            TryFailure::Connect => ProxyError::UpstreamConnect,
            TryFailure::Reset | TryFailure::Status5xx | TryFailure::Refused => ProxyError::UpstreamFailed,
            TryFailure::Timeout => ProxyError::UpstreamTimeout,
        };
        Failure::new(Side::Upstream, error)
    }

    /// Nothing of the request reached the endpoint's application: it may go elsewhere as it is.
    pub fn unprocessed(self) -> bool {
        matches!(self, TryFailure::Connect | TryFailure::Refused)
    }

    /// Whether the request can be sent again after this: unprocessed and handed back (or kept
    /// for retries), or idempotent with a body kept for retries.
    pub fn resendable(self, handed_back: bool, replayable: bool, idempotent: bool) -> bool {
        if self.unprocessed() {
            handed_back || replayable
        } else {
            replayable && idempotent
        }
    }
}

/// A failed exchange: the end of the request when the client or the proxy's limits caused it,
/// else the try's failure for the retry decision.
pub fn classify(error: &UpstreamError) -> Result<TryFailure, Failure> {
    if let UpstreamError::Overflow(o) = error {
        return Err(Failure::new(Side::Internal, ProxyError::Overflow(*o)));
    }
    if caused_by::<BodyTooLarge>(error) {
        return Err(Failure::closing(Side::Downstream, ProxyError::BodyTooLarge));
    }
    // A malformed chunk, or a client gone inside its body: a 400, not the endpoint's 502.
    if caused_by::<ClientBodyError>(error) {
        return Err(Failure::closing(Side::Downstream, ProxyError::ClientBody));
    }
    Ok(if error.is_connect() {
        TryFailure::Connect
    } else if error.is_unprocessed() {
        TryFailure::Refused
    } else {
        TryFailure::Reset
    })
}

/// Whether a try that failed this way is followed by another: the policy retries it, tries are
/// left, the request can be sent again, and the route's retry budget allows one more (checked
/// last: it spends a retry). A stream the endpoint never processed goes once more whatever the
/// policy.
pub fn may_retry(route: &RouteEntry, failure: TryFailure, attempt: u32, resendable: bool) -> bool {
    if failure == TryFailure::Refused && attempt == 0 && resendable {
        return true;
    }
    let Some(policy) = route.retries() else { return false };
    attempt < policy.attempts && resendable && failure.retried_by(policy) && route.withdraw_retry_budget()
}

/// Whether `E` is somewhere in the error's chain of causes.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut e = Some(error);
    while let Some(cause) = e {
        if cause.is::<E>() {
            return true;
        }
        e = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::http::upstream::h1::ExchangeError;
    use crate::table::Overflow;

    fn policy(on: &[RetryOn]) -> RetryPolicy {
        RetryPolicy { attempts: 2, on: on.to_vec(), per_try_timeout: None, budget: Default::default() }
    }

    #[test]
    fn failures_are_told_apart_by_side() {
        let connect = UpstreamError::Connect(io::ErrorKind::ConnectionRefused.into());
        assert_eq!(classify(&connect), Ok(TryFailure::Connect));
        let reset = UpstreamError::Exchange(ExchangeError::Closed);
        assert_eq!(classify(&reset), Ok(TryFailure::Reset));
        let overflow = UpstreamError::Overflow(Overflow::Connections);
        assert_eq!(classify(&overflow), Err(Failure::new(Side::Internal, ProxyError::Overflow(Overflow::Connections))));
        let too_large = UpstreamError::Exchange(ExchangeError::Body(Box::new(BodyTooLarge(10))));
        let f = classify(&too_large).unwrap_err();
        assert_eq!((f.side, f.error, f.close), (Side::Downstream, ProxyError::BodyTooLarge, true));
        let client = ClientBodyError(io::ErrorKind::UnexpectedEof.into());
        let broken = UpstreamError::Exchange(ExchangeError::Body(Box::new(client)));
        let f = classify(&broken).unwrap_err();
        assert_eq!((f.side, f.error, f.close), (Side::Downstream, ProxyError::ClientBody, true));
        let refused = UpstreamError::Refused(h2::Error::from(h2::Reason::REFUSED_STREAM));
        assert_eq!(classify(&refused), Ok(TryFailure::Refused));
    }

    #[test]
    fn each_try_failure_has_its_retry_condition_and_answer() {
        let cases = [
            (TryFailure::Connect, RetryOn::ConnectFailure, ProxyError::UpstreamConnect),
            (TryFailure::Reset, RetryOn::Reset, ProxyError::UpstreamFailed),
            (TryFailure::Timeout, RetryOn::Reset, ProxyError::UpstreamTimeout),
            (TryFailure::Status5xx, RetryOn::Status5xx, ProxyError::UpstreamFailed),
            (TryFailure::Refused, RetryOn::Reset, ProxyError::UpstreamFailed),
        ];
        for (failure, on, error) in cases {
            assert!(failure.retried_by(&policy(&[on])), "{failure:?}");
            assert!(!failure.retried_by(&policy(&[])), "{failure:?}");
            assert_eq!(failure.failure(), Failure::new(Side::Upstream, error));
        }
        assert!(TryFailure::Timeout.retried_by(&policy(&[RetryOn::Status5xx])));
        assert!(!TryFailure::Status5xx.retried_by(&policy(&[RetryOn::Reset, RetryOn::ConnectFailure])));
    }

    #[test]
    fn what_can_be_sent_again() {
        // Unprocessed: whatever the method, if the request came back or was kept.
        for f in [TryFailure::Connect, TryFailure::Refused] {
            assert!(f.resendable(true, false, false));
            assert!(f.resendable(false, true, false));
            assert!(!f.resendable(false, false, true));
        }
        // Processed: only idempotent requests whose body was kept.
        for f in [TryFailure::Reset, TryFailure::Timeout, TryFailure::Status5xx] {
            assert!(f.resendable(false, true, true));
            assert!(!f.resendable(true, true, false));
            assert!(!f.resendable(true, false, true));
        }
    }
}
