//! Machine-readable error codes shared by the server, the client and the
//! tools. Every refusal carries one [`ErrorCode`] plus a human message; the
//! HTTP status and gRPC code follow from the code alone, so both surfaces
//! always agree.

use serde::{Deserialize, Serialize};

/// Stable error codes. The wire form, in every encoding (JSON, bincode in
/// the Raft log), is the SCREAMING_SNAKE_CASE name, so reordering or adding
/// variants never changes what stored data means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request body or message could not be parsed.
    MalformedRequest,
    /// A field has a bad value (wrong type, out of range, empty, too long).
    InvalidArgument,
    /// The request body is larger than the server accepts.
    PayloadTooLarge,
    /// No or unknown credentials.
    Unauthenticated,
    /// The caller's role may not do this.
    PermissionDenied,
    /// The named thing does not exist.
    NotFound,
    AccountNotFound,
    AccountExists,
    AccountClosed,
    /// Same request_id, different payload.
    IdempotencyConflict,
    /// Same (bank_code, bank_ref) already posted under another request_id.
    DuplicatePayment,
    InvalidAmount,
    TooManyDecimals,
    AmountTooSmall,
    AmountOverLimit,
    InvalidUnits,
    UnitsTooSmall,
    UnitsOverLimit,
    /// No leader or no quorum right now; retry later (same request_id).
    Unavailable,
    /// The request did not finish within its deadline; the outcome is unknown.
    DeadlineExceeded,
    /// Cluster administration.
    AlreadyInitialized,
    NotInitialized,
    UnknownNode,
    DuplicateNode,
    /// A membership change that would leave the cluster without a quorum.
    NoQuorum,
    /// The account is suspended: sales and card changes are refused.
    AccountSuspended,
    /// No such card (or its generation does not match).
    CardUnknown,
    /// The card was replaced; details name the replacement.
    CardReplaced,
    /// The card number is already in use (card numbers are never reused).
    CardExists,
    /// The account already has an active card (one meter, one card).
    CardAlreadyIssued,
    /// The latest purchase's credit has not been confirmed loaded.
    CreditNotLoaded,
    /// Same card, same amount within 30 s: resend with confirm_duplicate.
    PossibleDuplicate,
    /// The record was already reversed (a record is reversed once only).
    AlreadyReversed,
    /// Reversals and reissues cannot be reversed.
    NotReversible,
    /// No unloaded latest purchase to reissue, or it was already reissued.
    NothingToReissue,
    /// No such record.
    RecordNotFound,
    /// No such invoice.
    InvoiceNotFound,
    /// No tariff (version) in force for the account at this time.
    TariffNotFound,
    /// A malformed tariff definition.
    InvalidTariff,
    /// Year-to-date units out of range (tariff arithmetic).
    InvalidYearUnits,
    /// The tariff's tiers are too narrow for the breakdown rule.
    TariffBreakdownNegative,
    /// An exact computation left the representable range.
    ArithmeticOverflow,
    /// The operation does not apply in the current state (e.g. resume an active account).
    InvalidState,
    /// That heating season was already opened.
    SeasonExists,
    /// The page token is not one this server issued for this query.
    InvalidPageToken,
    /// The operation needs a newer cluster op level: some member still
    /// runs an older build (upgrade every member; the level rises by itself).
    FeatureNotEnabled,
    /// A bug or a storage failure on the server.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedRequest => "MALFORMED_REQUEST",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::AccountNotFound => "ACCOUNT_NOT_FOUND",
            ErrorCode::AccountExists => "ACCOUNT_EXISTS",
            ErrorCode::AccountClosed => "ACCOUNT_CLOSED",
            ErrorCode::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            ErrorCode::DuplicatePayment => "DUPLICATE_PAYMENT",
            ErrorCode::InvalidAmount => "INVALID_AMOUNT",
            ErrorCode::TooManyDecimals => "TOO_MANY_DECIMALS",
            ErrorCode::AmountTooSmall => "AMOUNT_TOO_SMALL",
            ErrorCode::AmountOverLimit => "AMOUNT_OVER_LIMIT",
            ErrorCode::InvalidUnits => "INVALID_UNITS",
            ErrorCode::UnitsTooSmall => "UNITS_TOO_SMALL",
            ErrorCode::UnitsOverLimit => "UNITS_OVER_LIMIT",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ErrorCode::AlreadyInitialized => "ALREADY_INITIALIZED",
            ErrorCode::NotInitialized => "NOT_INITIALIZED",
            ErrorCode::UnknownNode => "UNKNOWN_NODE",
            ErrorCode::DuplicateNode => "DUPLICATE_NODE",
            ErrorCode::NoQuorum => "NO_QUORUM",
            ErrorCode::AccountSuspended => "ACCOUNT_SUSPENDED",
            ErrorCode::CardUnknown => "CARD_UNKNOWN",
            ErrorCode::CardReplaced => "CARD_REPLACED",
            ErrorCode::CardExists => "CARD_EXISTS",
            ErrorCode::CardAlreadyIssued => "CARD_ALREADY_ISSUED",
            ErrorCode::CreditNotLoaded => "CREDIT_NOT_LOADED",
            ErrorCode::PossibleDuplicate => "POSSIBLE_DUPLICATE",
            ErrorCode::AlreadyReversed => "ALREADY_REVERSED",
            ErrorCode::NotReversible => "NOT_REVERSIBLE",
            ErrorCode::NothingToReissue => "NOTHING_TO_REISSUE",
            ErrorCode::RecordNotFound => "RECORD_NOT_FOUND",
            ErrorCode::InvoiceNotFound => "INVOICE_NOT_FOUND",
            ErrorCode::TariffNotFound => "TARIFF_NOT_FOUND",
            ErrorCode::InvalidTariff => "INVALID_TARIFF",
            ErrorCode::InvalidYearUnits => "INVALID_YEAR_UNITS",
            ErrorCode::TariffBreakdownNegative => "TARIFF_BREAKDOWN_NEGATIVE",
            ErrorCode::ArithmeticOverflow => "ARITHMETIC_OVERFLOW",
            ErrorCode::InvalidState => "INVALID_STATE",
            ErrorCode::SeasonExists => "SEASON_EXISTS",
            ErrorCode::InvalidPageToken => "INVALID_PAGE_TOKEN",
            ErrorCode::FeatureNotEnabled => "FEATURE_NOT_ENABLED",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::MalformedRequest,
        ErrorCode::InvalidArgument,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::NotFound,
        ErrorCode::AccountNotFound,
        ErrorCode::AccountExists,
        ErrorCode::AccountClosed,
        ErrorCode::IdempotencyConflict,
        ErrorCode::DuplicatePayment,
        ErrorCode::InvalidAmount,
        ErrorCode::TooManyDecimals,
        ErrorCode::AmountTooSmall,
        ErrorCode::AmountOverLimit,
        ErrorCode::InvalidUnits,
        ErrorCode::UnitsTooSmall,
        ErrorCode::UnitsOverLimit,
        ErrorCode::Unavailable,
        ErrorCode::DeadlineExceeded,
        ErrorCode::AlreadyInitialized,
        ErrorCode::NotInitialized,
        ErrorCode::UnknownNode,
        ErrorCode::DuplicateNode,
        ErrorCode::NoQuorum,
        ErrorCode::AccountSuspended,
        ErrorCode::CardUnknown,
        ErrorCode::CardReplaced,
        ErrorCode::CardExists,
        ErrorCode::CardAlreadyIssued,
        ErrorCode::CreditNotLoaded,
        ErrorCode::PossibleDuplicate,
        ErrorCode::AlreadyReversed,
        ErrorCode::NotReversible,
        ErrorCode::NothingToReissue,
        ErrorCode::RecordNotFound,
        ErrorCode::InvoiceNotFound,
        ErrorCode::TariffNotFound,
        ErrorCode::InvalidTariff,
        ErrorCode::InvalidYearUnits,
        ErrorCode::TariffBreakdownNegative,
        ErrorCode::ArithmeticOverflow,
        ErrorCode::InvalidState,
        ErrorCode::SeasonExists,
        ErrorCode::InvalidPageToken,
        ErrorCode::FeatureNotEnabled,
        ErrorCode::Internal,
    ];

    /// Parse the wire form back (for clients reading gRPC statuses).
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            MalformedRequest | InvalidArgument | InvalidAmount | TooManyDecimals
            | AmountTooSmall | AmountOverLimit | InvalidUnits | UnitsTooSmall | UnitsOverLimit
            | InvalidTariff | InvalidYearUnits | InvalidPageToken => 400,
            Unauthenticated => 401,
            PermissionDenied => 403,
            NotFound | AccountNotFound | UnknownNode | CardUnknown | RecordNotFound
            | InvoiceNotFound | TariffNotFound => 404,
            AccountExists | AccountClosed | IdempotencyConflict | DuplicatePayment
            | AlreadyInitialized | DuplicateNode | AccountSuspended | CardReplaced | CardExists
            | CardAlreadyIssued | CreditNotLoaded | PossibleDuplicate | AlreadyReversed
            | NotReversible | NothingToReissue | InvalidState | SeasonExists
            | FeatureNotEnabled => 409,
            PayloadTooLarge => 413,
            NotInitialized | NoQuorum | TariffBreakdownNegative => 422,
            Internal | ArithmeticOverflow => 500,
            Unavailable => 503,
            DeadlineExceeded => 504,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        use ErrorCode::*;
        match self {
            MalformedRequest | InvalidArgument | InvalidAmount | TooManyDecimals
            | AmountTooSmall | AmountOverLimit | InvalidUnits | UnitsTooSmall | UnitsOverLimit
            | InvalidTariff | InvalidYearUnits | InvalidPageToken => tonic::Code::InvalidArgument,
            Unauthenticated => tonic::Code::Unauthenticated,
            PermissionDenied => tonic::Code::PermissionDenied,
            NotFound | AccountNotFound | UnknownNode | CardUnknown | RecordNotFound
            | InvoiceNotFound | TariffNotFound => tonic::Code::NotFound,
            AccountExists | DuplicateNode | AlreadyInitialized | CardExists | SeasonExists => {
                tonic::Code::AlreadyExists
            }
            AccountClosed
            | IdempotencyConflict
            | DuplicatePayment
            | NotInitialized
            | NoQuorum
            | AccountSuspended
            | CardReplaced
            | CardAlreadyIssued
            | CreditNotLoaded
            | PossibleDuplicate
            | AlreadyReversed
            | NotReversible
            | NothingToReissue
            | InvalidState
            | FeatureNotEnabled
            | TariffBreakdownNegative => tonic::Code::FailedPrecondition,
            PayloadTooLarge => tonic::Code::ResourceExhausted,
            Internal | ArithmeticOverflow => tonic::Code::Internal,
            Unavailable => tonic::Code::Unavailable,
            DeadlineExceeded => tonic::Code::DeadlineExceeded,
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ErrorCode::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code {s:?}")))
    }
}

/// `details` is a JSON value; encodings that are not self-describing
/// (bincode, in the Raft log and between nodes) carry it as JSON text.
mod details_serde {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &serde_json::Value, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            v.serialize(s)
        } else {
            v.to_string().serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
        if d.is_human_readable() {
            serde_json::Value::deserialize(d)
        } else {
            let text = String::deserialize(d)?;
            serde_json::from_str(&text).map_err(serde::de::Error::custom)
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: code, human message and optional structured details. This is
/// the HTTP error body `{"code","message","details"}` verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, with = "details_serde")]
    pub details: serde_json::Value,
}

/// gRPC metadata key that carries the error code.
pub const GRPC_CODE_METADATA: &str = "billdb-code";

/// `google.rpc.ErrorInfo.domain` of every billdb refusal.
pub const GRPC_ERROR_DOMAIN: &str = "billdb";

/// Largest JSON of an error's details carried in its gRPC `ErrorInfo`
/// (trailers are small); larger details are left out and said so
/// (`metadata["details_omitted"]`). HTTP answers always carry them.
pub const GRPC_DETAILS_BYTES_MAX: usize = 4096;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: serde_json::Value::Null,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// The gRPC status of this refusal: the gRPC code of [`ErrorCode::grpc_code`],
    /// the message `"CODE: human text"`, and the billdb code twice over: as
    /// a `google.rpc.ErrorInfo` detail (`reason` = the code, `domain` =
    /// [`GRPC_ERROR_DOMAIN`], `metadata["details"]` = the details as JSON when
    /// there are any and they fit [`GRPC_DETAILS_BYTES_MAX`]) in
    /// `grpc-status-details-bin`, which any gRPC library's rich-status
    /// helper reads, and in the `billdb-code` metadata entry (kept for v1
    /// clients). A `retry_after_ms` detail is also a `google.rpc.RetryInfo`.
    pub fn to_status(&self) -> tonic::Status {
        use tonic_types::{ErrorDetails, StatusExt};
        let mut info = std::collections::HashMap::new();
        if !self.details.is_null() {
            match serde_json::to_string(&self.details) {
                Ok(json) if json.len() <= GRPC_DETAILS_BYTES_MAX => {
                    info.insert("details".to_string(), json);
                }
                _ => {
                    info.insert("details_omitted".to_string(), "too large".to_string());
                }
            }
        }
        let mut details =
            ErrorDetails::with_error_info(self.code.as_str(), GRPC_ERROR_DOMAIN, info);
        if let Some(ms) = self.details.get("retry_after_ms").and_then(|v| v.as_u64()) {
            details.set_retry_info(Some(std::time::Duration::from_millis(ms)));
        }
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Ok(v) = tonic::metadata::MetadataValue::try_from(self.code.as_str()) {
            metadata.insert(GRPC_CODE_METADATA, v);
        }
        tonic::Status::with_error_details_and_metadata(
            self.code.grpc_code(),
            format!("{}: {}", self.code, self.message),
            details,
            metadata,
        )
    }

    /// Recover an [`ApiError`] from a gRPC status produced by [`ApiError::to_status`]
    /// (the `ErrorInfo` detail first, then the `billdb-code` metadata entry);
    /// statuses from elsewhere map to UNAVAILABLE/INTERNAL by gRPC code.
    pub fn from_status(status: &tonic::Status) -> ApiError {
        use tonic_types::StatusExt;
        let info = status
            .get_details_error_info()
            .filter(|i| i.domain == GRPC_ERROR_DOMAIN);
        let code = info
            .as_ref()
            .and_then(|i| ErrorCode::parse(&i.reason))
            .or_else(|| {
                status
                    .metadata()
                    .get(GRPC_CODE_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .and_then(ErrorCode::parse)
            })
            .unwrap_or(match status.code() {
                tonic::Code::Unavailable | tonic::Code::Cancelled => ErrorCode::Unavailable,
                tonic::Code::DeadlineExceeded => ErrorCode::DeadlineExceeded,
                tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
                _ => ErrorCode::Internal,
            });
        let prefix = format!("{}: ", code.as_str());
        let message = status
            .message()
            .strip_prefix(&prefix)
            .unwrap_or(status.message())
            .to_string();
        let details = info
            .and_then(|i| i.metadata.get("details").cloned())
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or(serde_json::Value::Null);
        ApiError::new(code, message).with_details(details)
    }
}

impl From<crate::money::MoneyError> for ApiError {
    fn from(e: crate::money::MoneyError) -> Self {
        let code = ErrorCode::parse(e.code()).unwrap_or(ErrorCode::InvalidArgument);
        ApiError::new(code, e.to_string())
    }
}

impl From<crate::tariff::TariffError> for ApiError {
    fn from(e: crate::tariff::TariffError) -> Self {
        let code = ErrorCode::parse(e.code()).unwrap_or(ErrorCode::InvalidArgument);
        ApiError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_wire_form_round_trips() {
        for code in [
            ErrorCode::IdempotencyConflict,
            ErrorCode::Unavailable,
            ErrorCode::NoQuorum,
        ] {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::Value::String(code.as_str().to_string()));
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("NOPE"), None);
    }

    #[test]
    fn every_money_error_has_its_own_code() {
        for input in ["abc", "1.234", "0", "-1", "1000000.01"] {
            let e = crate::money::parse_amount(input).unwrap_err();
            let api: ApiError = e.clone().into();
            assert_eq!(api.code.as_str(), e.code(), "{input}");
        }
        for input in ["x", "0", "1000000.001"] {
            let e = crate::money::parse_units(input).unwrap_err();
            let api: ApiError = e.clone().into();
            assert_eq!(api.code.as_str(), e.code(), "{input}");
        }
    }

    #[test]
    fn every_code_round_trips_and_is_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} listed twice");
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
        }
    }

    #[test]
    fn api_error_survives_json_and_bincode() {
        let e = ApiError::new(ErrorCode::DuplicatePayment, "again")
            .with_details(serde_json::json!({"original_request_id": "r1", "n": 3}));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["code"], "DUPLICATE_PAYMENT");
        assert_eq!(json["details"]["n"], 3);
        assert_eq!(serde_json::from_value::<ApiError>(json).unwrap(), e);
        let bin = bincode::serialize(&e).unwrap();
        assert_eq!(bincode::deserialize::<ApiError>(&bin).unwrap(), e);
    }

    #[test]
    fn status_round_trip_keeps_code_and_message() {
        let e = ApiError::new(ErrorCode::UnknownNode, "node 9 is not a member");
        let back = ApiError::from_status(&e.to_status());
        assert_eq!(back.code, ErrorCode::UnknownNode);
        assert_eq!(back.message, "node 9 is not a member");
    }

    #[test]
    fn status_carries_the_code_in_error_info_with_details_and_retry_info() {
        use tonic_types::StatusExt;
        let e = ApiError::new(ErrorCode::Unavailable, "no leader")
            .with_details(serde_json::json!({"retry_after_ms": 250, "field": "x"}));
        let status = e.to_status();
        let info = status.get_details_error_info().expect("ErrorInfo detail");
        assert_eq!(info.reason, "UNAVAILABLE");
        assert_eq!(info.domain, GRPC_ERROR_DOMAIN);
        let retry = status.get_details_retry_info().expect("RetryInfo detail");
        assert_eq!(
            retry.retry_delay,
            Some(std::time::Duration::from_millis(250))
        );
        // Without the metadata entry the ErrorInfo alone gives code and details.
        let bare = tonic::Status::with_error_details(
            status.code(),
            status.message(),
            status.get_error_details(),
        );
        let back = ApiError::from_status(&bare);
        assert_eq!(back.code, ErrorCode::Unavailable);
        assert_eq!(back.details, e.details);
    }

    #[test]
    fn oversized_details_are_left_out_of_the_status_and_said_so() {
        use tonic_types::StatusExt;
        let big = "x".repeat(GRPC_DETAILS_BYTES_MAX + 1);
        let e = ApiError::new(ErrorCode::InvalidArgument, "bad")
            .with_details(serde_json::json!({ "rows": big }));
        let info = e
            .to_status()
            .get_details_error_info()
            .expect("ErrorInfo detail");
        assert!(!info.metadata.contains_key("details"));
        assert_eq!(
            info.metadata.get("details_omitted").map(String::as_str),
            Some("too large")
        );
        assert_eq!(
            ApiError::from_status(&e.to_status()).code,
            ErrorCode::InvalidArgument
        );
    }
}
