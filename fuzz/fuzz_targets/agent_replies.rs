//! Every reply the host takes from the guest's agent, decoded as tonic's
//! client decodes it (gRPC length-prefixed frames through prost, split
//! across HTTP/2 data frames anywhere, then trailers; or a trailers-only
//! error), then handled as the shim handles it: stats become containerd's
//! cgroup metrics, output chunks are cut to IO_CHUNK_BYTES, error messages
//! are bounded and stripped of control characters. Also the bootstrap's
//! reading of what containerd writes on `start`'s stdin. Nothing may
//! panic; the checks say what the shim promises about each.
//!
//! Input: byte 0 picks the reply (`Reply`), byte 1 the shape of the
//! response (bit 0: trailers-only with the status in the headers; bit 1:
//! trailers after the body; bits 2-4: how many cuts into data frames),
//! byte 2 the grpc-status, a u16 length and that many bytes of
//! grpc-message, a u16 per cut, then the response body (for the bootstrap:
//! the stdin bytes).

#![no_main]

use bytes::Bytes;
use containerd_shim_protos::cgroups::metrics::Metrics;
use containerd_shim_protos::protobuf::Message as _;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body::{Body, Frame};
use husk_fuzz::{block_on, Input};
use husk_proto::agent::*;
use husk_shim::task::agent::{output_bytes, AgentError, MAX_AGENT_MESSAGE};
use husk_shim::task::bootstrap::StartInput;
use husk_shim::task::stats::{to_any, to_metrics, METRICS_TYPE_URL};
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::codec::{Codec, ProstCodec, Streaming};
use tonic::Status;

/// A response body as HTTP/2 hands it to tonic: data frames, then
/// trailers.
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// The response as the agent's side of the connection sent it.
struct Response {
    headers: HeaderMap,
    body: Frames,
}

impl Response {
    fn read(input: &mut Input) -> Self {
        let shape = input.u8();
        let code = input.u8();
        let len = usize::from(input.u16());
        let message = input.bytes(len);
        let cuts: Vec<usize> = (0..(shape >> 2) & 7)
            .map(|_| usize::from(input.u16()))
            .collect();
        let mut status = HeaderMap::new();
        status.insert("grpc-status", HeaderValue::from(u16::from(code)));
        if let Ok(v) = HeaderValue::from_bytes(message) {
            status.insert("grpc-message", v);
        }
        let data = input.rest();
        let mut frames = VecDeque::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        for cut in cuts.into_iter().chain([data.len()]) {
            frames.push_back(Frame::data(Bytes::copy_from_slice(&data[at..cut])));
            at = cut;
        }
        let mut headers = HeaderMap::new();
        if shape & 1 != 0 {
            headers = status.clone();
        }
        if shape & 2 != 0 {
            frames.push_back(Frame::trailers(status));
        }
        Response {
            headers,
            body: Frames(frames),
        }
    }

    /// tonic's client up to the first message (`Grpc::create_response`),
    /// with tonic's own error type.
    #[allow(clippy::result_large_err)]
    fn streaming<T: prost::Message + Default + Send + 'static>(
        self,
    ) -> Result<Streaming<T>, Status> {
        let decoder = ProstCodec::<(), T>::default().decoder();
        match Status::from_header_map(&self.headers) {
            Some(status) if status.code() != tonic::Code::Ok => Err(status),
            Some(_) => Ok(Streaming::new_empty(decoder, self.body)),
            None => Ok(Streaming::new_response(
                decoder,
                self.body,
                StatusCode::OK,
                None,
                None,
            )),
        }
    }

    /// A unary reply as tonic's `Grpc::unary` returns it.
    fn unary<T: prost::Message + Default + Send + 'static>(self) -> Result<T, AgentError> {
        block_on(async {
            let mut s = self.streaming::<T>()?;
            let m = s
                .message()
                .await?
                .ok_or_else(|| Status::internal("Missing response message."))?;
            s.trailers().await?;
            Ok(m)
        })
        .map_err(checked_error)
    }

    /// A streamed reply: every message, until the end or an error.
    fn stream<T: prost::Message + Default + Send + 'static>(self) -> Vec<Result<T, AgentError>> {
        block_on(async {
            let mut out = Vec::new();
            let mut s = match self.streaming::<T>() {
                Ok(s) => s,
                Err(e) => return vec![Err(e)],
            };
            loop {
                match s.message().await {
                    Ok(Some(m)) => out.push(Ok(m)),
                    Ok(None) => return out,
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        })
        .into_iter()
        .map(|r| r.map_err(checked_error))
        .collect()
    }
}

/// The shim's error from an agent status: bounded, printable.
fn checked_error(status: Status) -> AgentError {
    let e = AgentError::from_status(status);
    let text = e.to_string();
    assert!(text.len() <= MAX_AGENT_MESSAGE + 3, "{} bytes", text.len());
    assert!(
        !text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "control characters reach the log: {text:?}"
    );
    e
}

/// Stats become containerd's v1 metrics, which read back as they were.
fn stats(s: &ContainerStatsResponse) {
    let any = to_any(s).expect("metrics encode");
    assert_eq!(any.type_url, METRICS_TYPE_URL);
    let m = Metrics::parse_from_bytes(&any.value).expect("metrics decode");
    assert_eq!(m, to_metrics(s));
}

/// What containerd writes on `start`'s stdin, for the instance the
/// command line names.
fn start_input(stdin: &[u8]) {
    let Ok(input) = StartInput::parse(stdin, "husk-pod", "k8s.io") else {
        return;
    };
    if let StartInput::Bootstrap(p) = &input {
        assert_eq!(
            (p.instance_id.as_str(), p.namespace.as_str()),
            ("husk-pod", "k8s.io")
        );
    }
    // runc's Options, inside either form: the cgroup the shim moves to.
    let _ = input.shim_cgroup();
    let reply = input.reply("unix:///run/containerd/s/0123");
    assert!(!reply.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let reply = input.u8() % 13;
    if reply == 12 {
        return start_input(input.rest());
    }
    let r = Response::read(&mut input);
    match reply {
        // CreateContainer and ExecProcess: the pid.
        0 => drop(r.unary::<CreateContainerResponse>().map(|r| r.pid)),
        1 => drop(r.unary::<StartContainerResponse>()),
        2 => drop(r.unary::<WaitContainerResponse>().map(|r| r.exit_status)),
        // Signal, Remove, Pause, Resume, ResizePty, Update, WriteStdin,
        // SetClock, ConfigureNetwork.
        3 => drop(r.unary::<Empty>()),
        4 => drop(r.unary::<ListProcessesResponse>().map(|r| r.pids)),
        5 => {
            if let Ok(s) = r.unary::<ContainerStatsResponse>() {
                stats(&s);
            }
        }
        6 => {
            for chunk in r.stream::<OutputChunk>().into_iter().flatten() {
                assert!(output_bytes(chunk).len() <= husk_proto::IO_CHUNK_BYTES);
            }
        }
        7 => drop(r.stream::<OomEvent>()),
        8 => drop(r.unary::<HealthResponse>()),
        9 => drop(r.unary::<GuestInfoResponse>()),
        10 => drop(r.unary::<ReadSharedFileResponse>()),
        _ => drop(r.unary::<ShutdownResponse>()),
    }
});
