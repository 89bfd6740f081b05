//! The gRPC service of the config stream, with a codec that sends a group's pre-encoded resources.
//!
//! A snapshot differs between the nodes of a group only in its nonce, so its resources (fields 4-7
//! of `Snapshot`) are protobuf-encoded once per (group, revision) and each node's message is that
//! buffer behind a few header bytes: protobuf allows fields in any order and a decoder sees the
//! same `ServerMessage` as if prost had encoded it whole. This replaces the generated
//! `ConfigDiscoveryServer`, whose prost codec would clone and encode the snapshot per node.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use prost::bytes::{BufMut, Bytes};
use prost::encoding::{self, WireType};
use prost::Message;
use sluice_shared::proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Request, Response, Status, Streaming};

use super::ConfigStreamService;

/// The gRPC path of `ConfigDiscovery.Stream`.
const STREAM_PATH: &str = "/sluice.config.v1.ConfigDiscovery/Stream";

/// One message to a node.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Message(pb::ServerMessage),
    /// A snapshot whose resources are already encoded (shared by the group's nodes).
    Snapshot {
        revision: u64,
        nonce: String,
        control_plane_id: String,
        /// `Snapshot.sticky_key`: fleet-wide, so not part of the group's resources.
        sticky_key: Bytes,
        resources: Bytes,
    },
}

impl Outgoing {
    /// Writes the `ServerMessage` encoding.
    pub fn encode(&self, dst: &mut impl BufMut) {
        match self {
            Outgoing::Message(m) => m.encode_raw(dst),
            Outgoing::Snapshot { revision, nonce, control_plane_id, sticky_key, resources } => {
                let mut head = Vec::with_capacity(24 + nonce.len() + control_plane_id.len() + sticky_key.len());
                // proto3: default values are not written.
                if *revision != 0 {
                    encoding::uint64::encode(1, revision, &mut head);
                }
                if !nonce.is_empty() {
                    encoding::string::encode(2, nonce, &mut head);
                }
                if !control_plane_id.is_empty() {
                    encoding::string::encode(3, control_plane_id, &mut head);
                }
                if !sticky_key.is_empty() {
                    encoding::bytes::encode(8, sticky_key, &mut head);
                }
                // ServerMessage.snapshot is field 1, length-delimited.
                encoding::encode_key(1, WireType::LengthDelimited, dst);
                encoding::encode_varint((head.len() + resources.len()) as u64, dst);
                dst.put_slice(&head);
                dst.put_slice(resources);
            }
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct StreamCodec;

impl Codec for StreamCodec {
    type Encode = Outgoing;
    type Decode = pb::NodeMessage;
    type Encoder = StreamCodec;
    type Decoder = StreamCodec;

    fn encoder(&mut self) -> Self::Encoder {
        StreamCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        StreamCodec
    }
}

impl Encoder for StreamCodec {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst);
        Ok(())
    }
}

impl Decoder for StreamCodec {
    type Item = pb::NodeMessage;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<pb::NodeMessage>, Status> {
        pb::NodeMessage::decode(buf).map(Some).map_err(|e| Status::invalid_argument(format!("bad message: {e}")))
    }
}

pub(crate) type OutboundStream = ReceiverStream<Result<Outgoing, Status>>;

/// `ConfigDiscovery` as a tower service, for `tonic::transport::Server::add_service`.
#[derive(Clone)]
pub struct ConfigStreamServer {
    service: ConfigStreamService,
    /// Largest node message accepted (nodes send only small Hello/Ack/Nack messages).
    max_decoding_message_size: usize,
    max_encoding_message_size: usize,
}

impl ConfigStreamServer {
    pub(crate) fn new(service: ConfigStreamService, max_encoding_message_size: usize) -> Self {
        Self { service, max_decoding_message_size: 1024 * 1024, max_encoding_message_size }
    }
}

impl tonic::server::NamedService for ConfigStreamServer {
    const NAME: &'static str = "sluice.config.v1.ConfigDiscovery";
}

struct StreamMethod(ConfigStreamService);

impl tonic::server::StreamingService<pb::NodeMessage> for StreamMethod {
    type Response = Outgoing;
    type ResponseStream = OutboundStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<OutboundStream>, Status>> + Send>>;

    fn call(&mut self, request: Request<Streaming<pb::NodeMessage>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.open_stream(request) })
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for ConfigStreamServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> BoxFuture {
        if req.uri().path() != STREAM_PATH {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let method = StreamMethod(self.service.clone());
        let (decode, encode) = (self.max_decoding_message_size, self.max_encoding_message_size);
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(StreamCodec).apply_max_message_size_config(Some(decode), Some(encode));
            Ok(grpc.streaming(method, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_shared::validate::parse_json;
    use sluice_shared::Config;

    #[test]
    fn pre_encoded_snapshot_decodes_like_a_prost_one() {
        let mut c = Config::default();
        c.clusters.insert("a".into(), parse_json(br#"{"endpoints":[{"address":"127.0.0.1:9001"}]}"#).unwrap());
        c.listeners.insert(
            "l".into(),
            parse_json(
                br#"{"address":"127.0.0.1:9","protocol":"tls","sni":{"a.example.com":"a","b.example.com":"a"}}"#,
            )
            .unwrap(),
        );
        let resources = pb::Snapshot::from(&c);
        let outgoing = Outgoing::Snapshot {
            revision: 7,
            nonce: "abc".into(),
            control_plane_id: "cp-1".into(),
            sticky_key: Bytes::from_static(b"key"),
            resources: resources.encode_to_vec().into(),
        };
        let mut buf = Vec::new();
        outgoing.encode(&mut buf);
        let decoded = pb::ServerMessage::decode(buf.as_slice()).unwrap();
        let expected = pb::Snapshot {
            revision: 7,
            nonce: "abc".into(),
            control_plane_id: "cp-1".into(),
            sticky_key: b"key".to_vec(),
            ..resources
        };
        assert_eq!(decoded, pb::ServerMessage { msg: Some(pb::server_message::Msg::Snapshot(expected)) });

        // Empty resources and a zero revision are still a valid, decodable snapshot.
        let outgoing = Outgoing::Snapshot {
            revision: 0,
            nonce: String::new(),
            control_plane_id: String::new(),
            sticky_key: Bytes::new(),
            resources: Bytes::new(),
        };
        let mut buf = Vec::new();
        outgoing.encode(&mut buf);
        let decoded = pb::ServerMessage::decode(buf.as_slice()).unwrap();
        assert_eq!(decoded.msg, Some(pb::server_message::Msg::Snapshot(pb::Snapshot::default())));
    }
}
