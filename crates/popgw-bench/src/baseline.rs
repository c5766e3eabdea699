//! The baseline (`popgw-bench baseline`): tonic 0.14 and rustls with popgw's TLS
//! configuration ([`popgw::tls::server_config`]: the same certificate, client CA, CRL
//! check, TLS 1.3, ALPN h2), `TCP_NODELAY` on each connection, and an `IdentityGateway`
//! that answers fixed replies without looking at the request beyond decoding it. No
//! policy, validation, registry, cache, matching or audit: the limit of the stack on
//! the machine, which the gateway's figures are quoted against.

use std::future::Future;
use std::pin::Pin;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use popgw::proto::gateway as pb;
use popgw::proto::gateway::identity_gateway_server::{IdentityGateway, IdentityGatewayServer};
use popgw::proto::registry::{CitizenRecord, HouseholdMember};

/// The fixed answers.
#[derive(Clone)]
struct Fixed {
    citizen: CitizenRecord,
}

type Items =
    Pin<Box<dyn futures::Stream<Item = Result<pb::VerifyIdentityStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl IdentityGateway for Fixed {
    async fn verify_identity(
        &self,
        _request: Request<pb::VerifyIdentityRequest>,
    ) -> Result<Response<pb::VerifyIdentityResponse>, Status> {
        Ok(Response::new(pb::VerifyIdentityResponse {
            verdict: pb::Verdict::Match as i32,
            request_id: "01JBASELINE0000000000000000".into(),
            details: None,
        }))
    }

    type VerifyIdentityStreamStream = Items;

    async fn verify_identity_stream(
        &self,
        _request: Request<Streaming<pb::VerifyIdentityStreamRequest>>,
    ) -> Result<Response<Items>, Status> {
        Err(Status::unimplemented(
            "the baseline answers unary calls only",
        ))
    }

    async fn get_citizen(
        &self,
        _request: Request<pb::GetCitizenRequest>,
    ) -> Result<Response<pb::GetCitizenResponse>, Status> {
        Ok(Response::new(pb::GetCitizenResponse {
            request_id: "01JBASELINE0000000000000000".into(),
            citizen: Some(self.citizen.clone()),
            disclosed_fields: vec![
                "personal_id".into(),
                "full_name".into(),
                "date_of_birth".into(),
                "sex".into(),
            ],
        }))
    }

    async fn get_household(
        &self,
        _request: Request<pb::GetHouseholdRequest>,
    ) -> Result<Response<pb::GetHouseholdResponse>, Status> {
        let member = HouseholdMember {
            personal_id: self.citizen.personal_id.clone(),
            full_name: self.citizen.full_name.clone(),
            relation_to_head: "chủ hộ".into(),
        };
        Ok(Response::new(pb::GetHouseholdResponse {
            request_id: "01JBASELINE0000000000000000".into(),
            head: Some(member.clone()),
            members: vec![member.clone(), member],
        }))
    }

    async fn list_procedures(
        &self,
        _request: Request<pb::ListProceduresRequest>,
    ) -> Result<Response<pb::ListProceduresResponse>, Status> {
        Ok(Response::new(pb::ListProceduresResponse::default()))
    }
}

/// Serves the baseline on `listener` until `shutdown`: TLS handshakes in their own
/// tasks, established connections handed to tonic. `citizen` is the record GetCitizen
/// answers with (so that its reply is the size of a real one).
pub async fn serve(
    listener: TcpListener,
    tls: std::sync::Arc<rustls::ServerConfig>,
    citizen: CitizenRecord,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let acceptor = TlsAcceptor::from(tls);
    let accept = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                // Out of descriptors, say: wait rather than spin.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(tcp).await {
                    let _ = tx.send(Ok::<_, std::io::Error>(stream)).await;
                }
            });
        }
    });
    let served = tonic::transport::Server::builder()
        .add_service(IdentityGatewayServer::new(Fixed { citizen }))
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown)
        .await;
    accept.abort();
    served
}
