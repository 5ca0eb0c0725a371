//! What the client gRPC port tells a client or an orchestrator that has no
//! .proto file and no token: `grpc.health.v1.Health` (SERVING exactly when
//! `/readyz` answers 200) and server reflection (`grpc.reflection.v1` and
//! `v1alpha`) over the client API's descriptors. Neither needs a token, like
//! `/readyz` and `/openapi.json`; both are behind the port's TLS. Every
//! billing and cluster RPC still needs its token.
//!
//! May touch: the [`App`]'s readiness (read only). Nothing else.

use std::time::Duration;

use billdb_api::pb::billing_server::BillingServer;
use billdb_api::pb::cluster_server::ClusterServer;
use billdb_api::pb2::billing_server::BillingServer as BillingV2Server;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::grpc::GrpcApi;
use super::status;
use crate::app::App;

/// How often the health service re-reads the node's readiness.
pub const HEALTH_REFRESH_MS: u64 = 250;

/// The health service, kept up to date by a task that runs until the
/// process ends. The overall status (""), `billdb.v2.Billing` and
/// `billdb.v1.Billing` follow
/// readiness (a member, a leader known, everything committed applied,
/// storage sound); `billdb.v1.Cluster` is SERVING while the process runs,
/// since its RPCs (status, membership) are what an operator uses on a node
/// that is not ready.
pub fn health_service(
    app: App,
) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(refresh(app, reporter));
    service
}

async fn refresh(app: App, reporter: HealthReporter) {
    reporter
        .set_service_status(
            <ClusterServer<GrpcApi> as NamedService>::NAME,
            ServingStatus::Serving,
        )
        .await;
    let mut last: Option<ServingStatus> = None;
    loop {
        let now = match status::ready(&app) {
            Ok(()) => ServingStatus::Serving,
            Err(_) => ServingStatus::NotServing,
        };
        if last != Some(now) {
            for name in [
                "",
                <BillingServer<GrpcApi> as NamedService>::NAME,
                <BillingV2Server<GrpcApi> as NamedService>::NAME,
            ] {
                reporter.set_service_status(name, now).await;
            }
            tracing::info!(
                serving = now == ServingStatus::Serving,
                "gRPC health: {now:?}"
            );
            last = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(HEALTH_REFRESH_MS)).await;
    }
}

/// The reflection services (v1 and v1alpha: grpcurl speaks v1, older
/// clients such as grpcio-reflection's descriptor database v1alpha) over
/// `billdb.v1`, `billdb.v2` and `grpc.health.v1`. The node-to-node Raft API is on
/// another port and is not described here.
pub fn reflection_services() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(billdb_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
