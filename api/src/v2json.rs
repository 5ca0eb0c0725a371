//! The typed `billdb.v2` messages and the JSON answers of the HTTP API.
//!
//! The node computes every answer once, as the JSON document its HTTP route
//! returns; a `billdb.v2` reply is that document read through the reply's
//! descriptor by the standard proto3 JSON mapping ([`from_json`]), with
//! unknown fields refused. So a JSON answer that gains a field its v2 reply
//! lacks fails loudly (and the tests that call every RPC catch it) instead
//! of being dropped. [`to_json`] goes back, for tools that print answers as
//! JSON (the CLI), with the HTTP API's field names and plain integers.
//!
//! Pure: no I/O.

use std::sync::OnceLock;

use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};
use serde_json::{Value, json};

/// The client API's descriptors, decoded once.
fn pool() -> Result<&'static DescriptorPool, String> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET)
            .map_err(|e| format!("the client API's descriptors do not decode: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The descriptor of message `full_name` (e.g. `billdb.v2.RecordReply`).
pub fn descriptor(full_name: &str) -> Result<MessageDescriptor, String> {
    pool()?
        .get_message_by_name(full_name)
        .ok_or_else(|| format!("no message {full_name} in the client API"))
}

/// `M` filled from `v` by the proto3 JSON mapping: field names as in the
/// HTTP answer, 64-bit integers as numbers or strings, enums by value name,
/// `null` for absent. A field `M` does not have is an error.
pub fn from_json<M: prost::Message + prost::Name + Default>(v: &Value) -> Result<M, String> {
    let name = M::full_name();
    let desc = descriptor(&name)?;
    let msg = DynamicMessage::deserialize_with_options(desc, v, &DeserializeOptions::new())
        .map_err(|e| format!("the answer does not fit {name}: {e}"))?;
    msg.transcode_to::<M>()
        .map_err(|e| format!("the answer does not encode as {name}: {e}"))
}

/// The JSON of `m`: proto field names (those of the HTTP answers), 64-bit
/// integers as numbers, enums by name, every field (defaults included).
pub fn to_json<M: prost::Message + prost::Name>(m: &M) -> Result<Value, String> {
    let name = M::full_name();
    let mut msg = DynamicMessage::new(descriptor(&name)?);
    msg.transcode_from(m)
        .map_err(|e| format!("{name} does not decode through its descriptor: {e}"))?;
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .use_proto_field_name(true)
        .skip_default_fields(false);
    msg.serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| format!("{name} does not serialise: {e}"))
}

/// A request message re-read as another with the same fields and numbers
/// (a `billdb.v1` request as its `billdb.v2` twin).
pub fn same_wire<A: prost::Message, B: prost::Message + Default>(a: &A) -> Result<B, String> {
    B::decode(a.encode_to_vec().as_slice()).map_err(|e| format!("request does not re-read: {e}"))
}

/// The HTTP answer of `GET /v1/requests/{id}` (`{"request_id", "outcome"}`
/// with the stored answer, or refusal, as `outcome`) reshaped for
/// `billdb.v2.RequestOutcome`, whose `outcome` is a oneof named by the
/// answer's `result` (`record_posted`, …), `refused` for a refusal, and
/// `other` (the JSON) for an answer of an operation outside the billing
/// service.
pub fn request_outcome_json(v: &Value) -> Result<Value, String> {
    let desc = descriptor("billdb.v2.RequestOutcome")?;
    let request_id = v.get("request_id").cloned().unwrap_or(Value::Null);
    let outcome = v.get("outcome").cloned().unwrap_or(Value::Null);
    let result = outcome.get("result").and_then(Value::as_str);
    let reshaped = match result {
        Some(r) if r != "refused" && r != "other" && desc.get_field_by_name(r).is_some() => {
            json!({ "request_id": request_id, r: outcome })
        }
        Some(r) => json!({
            "request_id": request_id,
            "other": {"result": r, "json": outcome.to_string()},
        }),
        None => {
            let details = match outcome.get("details") {
                None | Some(Value::Null) => String::new(),
                Some(d) => d.to_string(),
            };
            json!({
                "request_id": request_id,
                "refused": {
                    "code": outcome.get("code").cloned().unwrap_or(Value::Null),
                    "message": outcome.get("message").cloned().unwrap_or(Value::Null),
                    "details_json": details,
                },
            })
        }
    };
    Ok(reshaped)
}

/// The inverse of [`request_outcome_json`], on the JSON of a
/// `billdb.v2.RequestOutcome` ([`to_json`]): `{"request_id", "outcome"}` as
/// the HTTP API answers it (for tools that print answers as JSON).
pub fn request_outcome_http_json(v: Value) -> Value {
    let Value::Object(mut o) = v else { return v };
    let request_id = o.remove("request_id").unwrap_or(Value::Null);
    let outcome = match o.into_iter().next() {
        Some((case, r)) if case == "refused" => {
            let details = r["details_json"]
                .as_str()
                .filter(|d| !d.is_empty())
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or(Value::Null);
            json!({"code": r["code"], "message": r["message"], "details": details})
        }
        Some((case, r)) if case == "other" => r["json"]
            .as_str()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or(r),
        Some((_, r)) => r,
        None => Value::Null,
    };
    json!({"request_id": request_id, "outcome": outcome})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb2;

    #[test]
    fn every_error_code_is_a_value_of_the_v2_enum_and_back() {
        let desc = pool()
            .unwrap()
            .get_enum_by_name("billdb.v2.ErrorCode")
            .unwrap();
        let in_proto: std::collections::BTreeSet<String> = desc
            .values()
            .map(|v| v.name().to_string())
            .filter(|n| n != "ERROR_CODE_UNSPECIFIED")
            .collect();
        let in_code: std::collections::BTreeSet<String> = crate::error::ErrorCode::ALL
            .iter()
            .map(|c| c.as_str().to_string())
            .collect();
        assert_eq!(in_proto, in_code);
    }

    #[test]
    fn v1_and_v2_requests_are_the_same_on_the_wire() {
        // Field for field: name, number, type, label. The v1 service is
        // served by re-reading its requests as v2 ones.
        let pool = pool().unwrap();
        let mut compared = 0;
        for v2 in pool.all_messages() {
            if v2.package_name() != "billdb.v2" || !v2.name().ends_with("Request") {
                continue;
            }
            let v1_name = match v2.name() {
                "ImportRequest" => "JsonRequest".to_string(),
                n => n.to_string(),
            };
            // Requests of RPCs that v1 never had have no twin.
            let Some(v1) = pool.get_message_by_name(&format!("billdb.v1.{v1_name}")) else {
                assert!(
                    [
                        "BillSeason",
                        "SeasonBill",
                        "BankPayments",
                        "Reconcile",
                        "ListReconciliations",
                        "GetReconciliation",
                        "BalanceReport"
                    ]
                    .iter()
                    .any(|p| v2.name().starts_with(p)),
                    "no billdb.v1.{v1_name}"
                );
                continue;
            };
            let shape = |m: &MessageDescriptor| -> Vec<(u32, String, bool)> {
                m.fields()
                    .map(|f| {
                        (
                            f.number(),
                            format!("{:?}", f.kind()).replace("v1", "v2"),
                            f.is_list(),
                        )
                    })
                    .collect()
            };
            assert_eq!(shape(&v1), shape(&v2), "{}", v2.name());
            compared += 1;
        }
        assert!(compared >= 20, "{compared}");
    }

    #[test]
    fn an_answer_with_a_field_the_reply_lacks_is_refused() {
        let ok = json!({"result": "credit_loaded", "record_id": "A:1", "already_loaded": true, "log_index": 7});
        let r: pb2::CreditLoadedReply = from_json(&ok).unwrap();
        assert_eq!(r.record_id, "A:1");
        assert!(r.already_loaded);
        assert_eq!(r.log_index, 7);
        let mut extra = ok.clone();
        extra["surprise"] = json!(1);
        let e = from_json::<pb2::CreditLoadedReply>(&extra).unwrap_err();
        assert!(e.contains("surprise"), "{e}");
    }

    #[test]
    fn to_json_gives_back_the_answer() {
        let answer = json!({
            "result": "record_posted", "record_id": "A:2", "balance": "10.50",
            "warnings": ["CREDIT_NOT_LOADED"], "log_index": 12,
            "record": {"account_id": "A", "seq": 2, "kind": "purchase", "amount": "-4.50",
                       "units": "3", "ts_ms": 1700000000000i64, "refers_to": null,
                       "tiers": [{"units": "3", "price": "1.50", "amount": "4.50"}]},
        });
        let r: pb2::RecordReply = from_json(&answer).unwrap();
        let record = r.record.as_ref().unwrap();
        assert_eq!(record.tiers.len(), 1);
        assert_eq!(record.refers_to, None);
        let back = to_json(&r).unwrap();
        assert_eq!(back["record"]["seq"], json!(2));
        assert_eq!(back["record"]["ts_ms"], json!(1700000000000i64));
        assert_eq!(back["balance"], json!("10.50"));
        assert_eq!(back["warnings"], json!(["CREDIT_NOT_LOADED"]));
        assert!(back["record"].get("refers_to").is_none());
    }

    #[test]
    fn a_card_verdict_is_an_enum() {
        let c: pb2::CardCheck = from_json(&json!({
            "verdict": "CREDIT_NOT_LOADED", "message": "m", "expected_seq": 3,
            "recent": [], "account": null, "card": null, "unloaded_record_id": "A:3",
        }))
        .unwrap();
        assert_eq!(c.verdict(), pb2::card_check::Verdict::CreditNotLoaded);
        assert!(from_json::<pb2::CardCheck>(&json!({"verdict": "MAYBE"})).is_err());
    }

    #[test]
    fn a_stored_outcome_becomes_its_oneof_case() {
        let posted = json!({"request_id": "r1", "outcome": {
            "result": "credit_loaded", "record_id": "A:1", "already_loaded": false}});
        let o: pb2::RequestOutcome = from_json(&request_outcome_json(&posted).unwrap()).unwrap();
        assert!(matches!(
            o.outcome,
            Some(pb2::request_outcome::Outcome::CreditLoaded(_))
        ));
        let refused = json!({"request_id": "r2", "outcome": {
            "code": "ACCOUNT_CLOSED", "message": "closed", "details": {"account_id": "A"}}});
        let o: pb2::RequestOutcome = from_json(&request_outcome_json(&refused).unwrap()).unwrap();
        let Some(pb2::request_outcome::Outcome::Refused(r)) = o.outcome else {
            panic!("{o:?}")
        };
        assert_eq!(r.code(), pb2::ErrorCode::AccountClosed);
        assert_eq!(r.details_json, r#"{"account_id":"A"}"#);
        let o = pb2::RequestOutcome {
            request_id: "r2".into(),
            outcome: Some(pb2::request_outcome::Outcome::Refused(r)),
        };
        assert_eq!(request_outcome_http_json(to_json(&o).unwrap()), refused);
        let other =
            json!({"request_id": "r3", "outcome": {"result": "season_billed", "billed": 3}});
        let o: pb2::RequestOutcome = from_json(&request_outcome_json(&other).unwrap()).unwrap();
        let Some(pb2::request_outcome::Outcome::Other(x)) = o.outcome else {
            panic!("{o:?}")
        };
        assert_eq!(x.result, "season_billed");
        let o = pb2::RequestOutcome {
            request_id: "r3".into(),
            outcome: Some(pb2::request_outcome::Outcome::Other(x)),
        };
        assert_eq!(request_outcome_http_json(to_json(&o).unwrap()), other);
    }

    /// Every typed reply has exactly the fields of its HTTP answer's
    /// schema in the OpenAPI description (api/openapi.json, itself checked
    /// against the code by the node's tests).
    #[test]
    fn replies_have_the_fields_of_the_http_answers() {
        let doc: Value = serde_json::from_str(include_str!("../openapi.json")).unwrap();
        let schemas = &doc["components"]["schemas"];
        fn collect(schemas: &Value, s: &Value, out: &mut std::collections::BTreeSet<String>) {
            if let Some(r) = s.get("$ref").and_then(Value::as_str) {
                let name = r.trim_start_matches("#/components/schemas/");
                return collect(schemas, &schemas[name], out);
            }
            if let Some(all) = s.get("allOf").and_then(Value::as_array) {
                for part in all {
                    collect(schemas, part, out);
                }
            }
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                out.extend(props.keys().cloned());
            }
        }
        let properties = |name: &str| -> std::collections::BTreeSet<String> {
            let mut out = std::collections::BTreeSet::new();
            collect(schemas, &schemas[name], &mut out);
            assert!(!out.is_empty(), "schema {name} has no properties");
            out
        };
        let pairs = [
            ("OpenAccountReply", "AccountOpened"),
            ("PaymentReply", "PaymentPosted"),
            ("Account", "AccountView"),
            ("AccountReply", "AccountUpdated"),
            ("CardIssuedReply", "CardIssued"),
            ("CardReplacedReply", "CardReplaced"),
            ("RecordReply", "RecordPosted"),
            ("CreditLoadedReply", "CreditLoaded"),
            ("InvoicePrintedReply", "InvoicePrinted"),
            ("BoundarySetReply", "BoundarySet"),
            ("SeasonOpenedReply", "SeasonOpened"),
            ("TariffDefinedReply", "TariffDefined"),
            ("ImportReply", "Imported"),
            ("CardCheck", "CardCheck"),
            ("RecordsPage", "RecordsPage"),
            ("Statement", "StatementView"),
            ("StatementLine", "StatementLineView"),
            ("StatementKindTotal", "StatementKindTotal"),
            ("Report", "ReportView"),
            ("MonthlyReport", "MonthlyReport"),
            ("BalanceReport", "BalanceReport"),
            ("BalanceLine", "BalanceLine"),
            ("KindSum", "KindSum"),
            ("RecordCount", "RecordCount"),
            ("ReadConsistency", "ReadConsistency"),
            ("ReportLine", "ReportLine"),
            ("Record", "RecordView"),
            ("Card", "Card"),
            ("Invoice", "Invoice"),
            ("LastPurchase", "LastPurchase"),
            ("AccountSeason", "AccountSeason"),
            ("TierPiece", "TierPiece"),
            ("SeasonBillRun", "SeasonBillRun"),
            ("SeasonBillReport", "SeasonBillReport"),
            ("SeasonBillSumLine", "SeasonBillSumLine"),
            ("SeasonBillLines", "LinesPage"),
            ("SeasonBillLine", "LineAnswer"),
            ("BankDayPayments", "BankDayPayments"),
            ("BankPayment", "BankPayment"),
            ("CountAmount", "CountAmount"),
            ("Reconciliation", "ReconciliationView"),
            ("Reconciliations", "Reconciliations"),
            ("ClassTotal", "CountAmountOpt"),
            ("ReconciliationTotals", "ReconciliationTotals"),
            ("ReconciliationItem", "ReconciliationItem"),
        ];
        for (message, schema) in pairs {
            let fields: std::collections::BTreeSet<String> =
                descriptor(&format!("billdb.v2.{message}"))
                    .unwrap()
                    .fields()
                    .map(|f| f.name().to_string())
                    .collect();
            assert_eq!(
                fields,
                properties(schema),
                "billdb.v2.{message} vs schema {schema}"
            );
        }
        // Every reply of the service is one of them.
        let service = pool()
            .unwrap()
            .get_service_by_name("billdb.v2.Billing")
            .unwrap();
        for m in service.methods() {
            let out = m.output().name().to_string();
            assert!(
                out == "RequestOutcome" || pairs.iter().any(|(p, _)| *p == out),
                "{} answers {out}, which no schema is compared with",
                m.name()
            );
        }
    }
}
