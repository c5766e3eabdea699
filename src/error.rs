//! The gateway's errors and their one mapping to gRPC status codes.
//!
//! Messages name the field or rule at fault and never carry a value (a value may be
//! personal data, and statuses end up in client logs).

use tonic::{Code, Status};

use crate::audit::AuditError;
use crate::policy::Denied;
use crate::registry::RegistryError;
use crate::tls::IdentityError;
use crate::validation::InvalidField;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No usable client identity.
    #[error("{0}")]
    Unauthenticated(#[from] IdentityError),
    /// Known identity, not allowed.
    #[error("{0}")]
    Denied(#[from] Denied),
    /// A procedure's profile does not allow this access.
    #[error("{0}")]
    NotInProfile(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(#[from] InvalidField),
    /// The subject does not exist (only where the caller may learn it).
    #[error("{0}")]
    NotFound(&'static str),
    /// The registry could not be asked: "could not check".
    #[error("could not check: {0}")]
    Upstream(#[from] RegistryError),
    /// The client's rate limit: retry after the wait.
    #[error("rate limit of this client exceeded; retry in {} ms", .0.as_millis().max(1))]
    RateLimited(std::time::Duration),
    /// Too many failed verifications of this citizen: locked for the time left.
    #[error("too many failed verifications of this citizen; verification locked for {} s", .0.as_secs().max(1))]
    SubjectLocked(std::time::Duration),
    /// This client's tries about this citizen (or all clients') are used for the window.
    #[error("too many failed or pending verifications of this citizen; retry in {} s", .0.as_secs().max(1))]
    SubjectTriesSpent(std::time::Duration),
    /// The table of citizens under verification is full: no new one can be tried now.
    #[error("too many citizens under verification; retry shortly")]
    SubjectTableFull,
    /// A verification stream carried more items than allowed.
    #[error("at most {0} items per VerifyIdentityStream call; open a new one")]
    StreamItems(u64),
    /// A content-type other than application/grpc.
    #[error("content-type must be application/grpc or application/grpc+proto")]
    ContentType,
    /// tonic refused the request before its handler (undecodable, too large...): the
    /// code tonic answered; the body is never recorded.
    #[error("request refused before its handler: {}", code_name(*.0))]
    Undecodable(Code),
    /// The request's task failed (a bug): a fixed message, never the panic's.
    #[error("request failed (internal error)")]
    Internal,
    /// Too many audit queries and watches running.
    #[error("too many audit queries and watches running; retry when one has ended")]
    OperatorCalls,
    /// A verification of the audit folder is already running on this node.
    #[error("a verification of this node's audit log is already running; retry when it has ended")]
    VerifyRunning,
    /// Too many access reports running.
    #[error("too many access reports running; retry shortly")]
    ReportCalls,
    /// Too many requests running: this one is shed, to be retried.
    #[error("gateway overloaded ({0} requests running); retry shortly")]
    Overloaded(usize),
    /// The audit log could not record the request: nothing is disclosed.
    #[error("audit log unavailable, nothing disclosed: {0}")]
    Audit(#[from] AuditError),
    /// The central audit index could not answer: "could not check", never an empty report.
    #[error("could not check: {0}")]
    Index(#[from] crate::audit::index::IndexError),
}

impl From<crate::limits::Refused> for GatewayError {
    fn from(r: crate::limits::Refused) -> GatewayError {
        match r {
            crate::limits::Refused::Locked(left) => GatewayError::SubjectLocked(left),
            crate::limits::Refused::Spent(left) => GatewayError::SubjectTriesSpent(left),
            crate::limits::Refused::Full => GatewayError::SubjectTableFull,
        }
    }
}

impl GatewayError {
    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            GatewayError::Unauthenticated(_) => Code::Unauthenticated,
            GatewayError::Denied(_) | GatewayError::NotInProfile(_) => Code::PermissionDenied,
            GatewayError::Invalid(_) => Code::InvalidArgument,
            GatewayError::NotFound(_) => Code::NotFound,
            GatewayError::Internal => Code::Internal,
            GatewayError::ContentType => Code::InvalidArgument,
            GatewayError::Undecodable(code) => *code,
            GatewayError::RateLimited(_)
            | GatewayError::SubjectLocked(_)
            | GatewayError::SubjectTriesSpent(_)
            | GatewayError::SubjectTableFull
            | GatewayError::StreamItems(_)
            | GatewayError::OperatorCalls
            | GatewayError::VerifyRunning
            | GatewayError::ReportCalls => Code::ResourceExhausted,
            GatewayError::Upstream(RegistryError::DeadlineExceeded(_)) => Code::DeadlineExceeded,
            GatewayError::Upstream(_)
            | GatewayError::Audit(_)
            | GatewayError::Overloaded(_)
            | GatewayError::Index(_) => Code::Unavailable,
        }
    }
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Status {
        use tonic_types::{ErrorDetails, StatusExt};
        match &e {
            // RetryInfo in the status details: how long to wait, for clients that back off.
            GatewayError::RateLimited(wait)
            | GatewayError::SubjectLocked(wait)
            | GatewayError::SubjectTriesSpent(wait) => Status::with_error_details(
                e.code(),
                e.to_string(),
                ErrorDetails::with_retry_info(Some(*wait)),
            ),
            GatewayError::Overloaded(_)
            | GatewayError::SubjectTableFull
            | GatewayError::ReportCalls => Status::with_error_details(
                e.code(),
                e.to_string(),
                ErrorDetails::with_retry_info(Some(std::time::Duration::from_millis(50))),
            ),
            _ => Status::new(e.code(), e.to_string()),
        }
    }
}

pub use crate::telemetry::code_name;

/// The gRPC status of a registry error, for `popgw registry serve`: UNAVAILABLE when
/// the store could not answer, OUT_OF_RANGE for a change-feed position that cannot be
/// resumed, INTERNAL (fixed message, details logged) for stored data that is invalid.
pub fn registry_status(e: &RegistryError) -> Status {
    match e {
        RegistryError::Unavailable(_) => Status::unavailable(e.to_string()),
        RegistryError::OutOfRange(_) => Status::out_of_range(e.to_string()),
        RegistryError::DeadlineExceeded(_) => Status::deadline_exceeded(e.to_string()),
        RegistryError::Invalid(_) => {
            tracing::error!(error = %e, "registry: stored data invalid");
            Status::internal("registry data invalid")
        }
    }
}

/// Why a stream the gateway was answering ends before its caller ended it — after the
/// call's audit record was written, so these end an answer rather than refuse a call.
#[derive(Debug, thiserror::Error)]
pub enum StreamEnd {
    /// The gateway is stopping; `resume` says how to carry on elsewhere or later.
    #[error("gateway shutting down; {resume}")]
    ShuttingDown {
        /// What the caller does next.
        resume: &'static str,
    },
    /// This node's audit log could not be read.
    #[error("audit log unreadable")]
    LogUnreadable,
    /// The central index stopped answering mid-query.
    #[error("{0} (the query is recorded; ask again when the index is back)")]
    IndexDown(crate::audit::index::IndexError),
    /// A watcher could not keep up and lost records from its view.
    #[error("watcher fell {behind} records behind; resume with from_seq={next}")]
    Lagged {
        /// Records it missed.
        behind: u64,
        /// Where to resume.
        next: u64,
    },
}

impl From<StreamEnd> for Status {
    fn from(e: StreamEnd) -> Status {
        let code = match e {
            StreamEnd::Lagged { .. } => Code::DataLoss,
            _ => Code::Unavailable,
        };
        Status::new(code, e.to_string())
    }
}

/// What `service::early` answers itself: a unary request's body refused while it
/// arrived, or a call whose caller's deadline passes before its handler answered.
#[derive(Debug, thiserror::Error)]
pub enum EarlyRefusal {
    /// The caller's grpc-timeout is about to pass: answered before the caller's own timer
    /// (which would read as CANCELLED).
    #[error("the caller's deadline passed before the answer was ready")]
    CallerDeadline,
    /// A second message on a unary call.
    #[error("more than one request message for a unary call")]
    SecondMessage,
    /// The client's (or the process's) budget of unfinished requests is spent: their
    /// bytes, and a fixed share for each call waiting for its message.
    #[error(
        "too many unfinished requests from this client; finish or cancel the requests in flight"
    )]
    OverBudget,
    /// The message did not arrive whole within the body timeout.
    #[error("the request message was not finished in time")]
    TooSlow,
}

impl From<EarlyRefusal> for Status {
    fn from(e: EarlyRefusal) -> Status {
        let code = match e {
            EarlyRefusal::SecondMessage => Code::Internal,
            EarlyRefusal::OverBudget => Code::ResourceExhausted,
            EarlyRefusal::TooSlow | EarlyRefusal::CallerDeadline => Code::DeadlineExceeded,
        };
        Status::new(code, e.to_string())
    }
}

/// Why `popgw registry serve` refuses a call (besides the store's own errors, mapped by
/// [`registry_status`]).
#[derive(Debug, thiserror::Error)]
pub enum RegistryRefusal {
    /// No usable client certificate.
    #[error("{0}")]
    Unauthenticated(crate::tls::IdentityError),
    /// A client identity the registry does not allow.
    #[error("this client identity is not allowed by the registry")]
    NotAllowed,
    /// A request field is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Switched off or failing on purpose (`--inject-*`, SIGUSR1).
    #[error("{0} (fault injection)")]
    Injected(&'static str),
    /// The registry is stopping.
    #[error("registry shutting down; resume from the last version")]
    ShuttingDown,
}

impl From<RegistryRefusal> for Status {
    fn from(e: RegistryRefusal) -> Status {
        let code = match e {
            RegistryRefusal::Unauthenticated(_) => Code::Unauthenticated,
            RegistryRefusal::NotAllowed => Code::PermissionDenied,
            RegistryRefusal::Invalid(_) => Code::InvalidArgument,
            RegistryRefusal::Injected(_) | RegistryRefusal::ShuttingDown => Code::Unavailable,
        };
        Status::new(code, e.to_string())
    }
}
