//! The client side of a `media` session (docs/media.md): serving an image
//! as a guest's medium, ejecting, asking what is in a drive.
//!
//! [`serve`] is the NBD server of `vmgate media GUEST insert`: it sends
//! INSERT, answers the agent's handshake and QEMU's reads with
//! [`vmgate_nbd::Server`] (read-only, bounds-checked, requests at most
//! 32 MiB), reading the image at each request's offset, and reports what
//! happens through [`MediaEvent`]s. Nothing is read ahead: the guest reads
//! what it needs. Asked to stop, it sends EJECT and serves on until the
//! agent has taken the medium out (EJECTED), so reads in flight finish, then
//! closes the session.
//!
//! [`status`] and [`eject`] are one message and one answer each.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vmgate_nbd::media::{self, Decoder, Direction, Item};
pub use vmgate_nbd::media::{valid_name, Ejected, Medium, Status, MAX_NAME};
use vmgate_nbd::server::{error_reply, read_reply};
use vmgate_nbd::{Event, Export, Server};
use vmgate_relay::{FrameRx, FrameTx};
use vmgate_wire::{Close, CloseCode, Frame};

use crate::ws::{self, WsRx, WsTx};
use crate::Ws;

/// What a served medium's session reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// The guest's drive holds the medium.
    Inserted { size: u64 },
    /// The eject was asked for (EJECT sent).
    Ejecting,
    /// The medium left the drive; what the guest read.
    Ejected(Ejected),
}

/// An image to serve: anything that reads at an offset.
pub trait Image: Send + Sync + 'static {
    /// Its size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset` (inside the image: the server checked).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl Image for File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

/// The NBD bytes `bytes` as media messages.
async fn send_nbd(tx: &mut WsTx, bytes: &[u8]) -> Result<(), Close> {
    for m in media::nbd_messages(bytes) {
        tx.send(Frame::Data(m)).await?;
    }
    Ok(())
}

/// One read's reply, header and data, as media messages, read straight
/// into the messages' buffers.
fn read_reply_messages(
    image: &dyn Image,
    handle: u64,
    offset: u64,
    length: u32,
) -> Result<Vec<Bytes>, ()> {
    let total = vmgate_nbd::proto::REPLY_LEN + length as usize;
    let mut msgs = Vec::with_capacity(total / media::MAX_NBD + 1);
    let mut at = 0usize;
    while at < total {
        let n = (total - at).min(media::MAX_NBD);
        let mut m = BytesMut::with_capacity(media::HEADER_LEN + n);
        m.put_slice(&media::header(media::NBD, n));
        let mut fill = n;
        if at == 0 {
            m.put_slice(&read_reply(handle));
            fill -= vmgate_nbd::proto::REPLY_LEN;
        }
        let data_at = at.saturating_sub(vmgate_nbd::proto::REPLY_LEN);
        let start = m.len();
        m.resize(start + fill, 0);
        let pos = offset.checked_add(data_at as u64).ok_or(())?;
        image.read_at(&mut m[start..], pos).map_err(|_| ())?;
        msgs.push(m.freeze());
        at += n;
    }
    Ok(msgs)
}

/// How a served medium's session ended.
#[derive(Debug)]
pub struct Served {
    /// The gateway's close, or what broke.
    pub close: Close,
    /// Whether the close came from the gateway (else the connection broke).
    pub closed: bool,
    /// What the agent said the guest read, if the medium was inserted.
    pub ejected: Option<Ejected>,
}

/// Serves `image` as medium `name` on a media session's WebSocket until the
/// session ends. `stop` asks for the eject (Ctrl+C); `events` hears how it
/// goes.
pub async fn serve(
    ws: Ws,
    image: Arc<dyn Image>,
    name: String,
    stop: CancellationToken,
    events: mpsc::UnboundedSender<MediaEvent>,
) -> Served {
    let (mut rx, mut tx) = ws::split(ws);
    let size = image.size();
    let mut server = Server::new(Export {
        name: name.clone(),
        size,
    });
    let mut decoder = Decoder::new(Direction::AgentToClient);
    let mut ejected = None;
    let mut ejecting = false;
    let result: Result<Close, Close> = async {
        tx.send(Frame::Data(media::encode(&Item::Insert {
            name: name.clone(),
        })))
        .await?;
        send_nbd(&mut tx, &server.take_output()).await?;
        loop {
            let frame = tokio::select! {
                f = rx.recv() => f?,
                _ = stop.cancelled(), if !ejecting => {
                    ejecting = true;
                    let _ = events.send(MediaEvent::Ejecting);
                    tx.send(Frame::Data(media::encode(&Item::Eject))).await?;
                    continue;
                }
            };
            let data = match frame {
                Some(Frame::Data(d)) => d,
                Some(Frame::Close(c)) => return Ok(c),
                Some(Frame::Notice(_)) | Some(Frame::Eof) => continue,
                None => {
                    return Err(Close::new(
                        CloseCode::Internal,
                        "the gateway ended the stream without a close",
                    ))
                }
                Some(_) => continue,
            };
            let mut items = Vec::new();
            decoder.feed(data, &mut items).map_err(|e| {
                Close::new(
                    CloseCode::ProtocolError,
                    format!("malformed media stream from the agent: {e}"),
                )
            })?;
            for item in items {
                match item {
                    Item::Nbd(b) => {
                        server.receive(&b).map_err(|e| {
                            Close::new(CloseCode::ProtocolError, format!("NBD from the agent: {e}"))
                        })?;
                        send_nbd(&mut tx, &server.take_output()).await?;
                        while let Some(ev) = server.next_event() {
                            let Event::Read {
                                handle,
                                offset,
                                length,
                            } = ev
                            else {
                                continue;
                            };
                            let img = image.clone();
                            let msgs = tokio::task::spawn_blocking(move || {
                                read_reply_messages(&*img, handle, offset, length)
                            })
                            .await
                            .unwrap_or(Err(()));
                            match msgs {
                                Ok(msgs) => {
                                    for m in msgs {
                                        tx.send(Frame::Data(m)).await?;
                                    }
                                }
                                Err(()) => {
                                    tracing::warn!(
                                        offset,
                                        length,
                                        "cannot read the image: answering EIO"
                                    );
                                    send_nbd(&mut tx, &error_reply(handle, vmgate_nbd::proto::EIO))
                                        .await?;
                                }
                            }
                        }
                    }
                    Item::Inserted(i) => {
                        let _ = events.send(MediaEvent::Inserted { size: i.size });
                    }
                    Item::Ejected(e) => {
                        ejected = Some(e);
                        let _ = events.send(MediaEvent::Ejected(e));
                        if ejecting {
                            // Our eject: the agent would wait for another
                            // insert on this session; we are done.
                            let close = Close::new(CloseCode::Normal, "medium ejected");
                            tx.close(close.clone()).await;
                            return Ok(close);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    .await;
    match result {
        Ok(close) => Served {
            close,
            closed: true,
            ejected,
        },
        Err(close) => {
            tx.close(close.clone()).await;
            Served {
                close,
                closed: false,
                ejected,
            }
        }
    }
}

/// Waits for the session's answer to a one-message request: the items
/// before the close, and the close.
async fn ask(ws: Ws, item: Item, limit: Duration) -> (Vec<Item>, Close) {
    let (mut rx, mut tx): (WsRx, WsTx) = ws::split(ws);
    let exchange = async {
        tx.send(Frame::Data(media::encode(&item))).await?;
        let mut decoder = Decoder::new(Direction::AgentToClient);
        let mut items = Vec::new();
        loop {
            match rx.recv().await? {
                Some(Frame::Data(d)) => decoder.feed(d, &mut items).map_err(|e| {
                    Close::new(
                        CloseCode::ProtocolError,
                        format!("malformed media stream from the agent: {e}"),
                    )
                })?,
                Some(Frame::Close(c)) => return Ok((items, c)),
                None => {
                    return Err(Close::new(
                        CloseCode::Internal,
                        "the gateway ended the stream without a close",
                    ))
                }
                Some(_) => {}
            }
        }
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(r)) => r,
        Ok(Err(c)) => (Vec::new(), c),
        Err(_) => (
            Vec::new(),
            Close::new(CloseCode::Internal, format!("no answer within {limit:?}")),
        ),
    }
}

/// What is in the session's drive.
pub async fn status(ws: Ws) -> Result<Status, Close> {
    let (items, close) = ask(ws, Item::Status, Duration::from_secs(30)).await;
    items
        .into_iter()
        .find_map(|i| match i {
            Item::Report(s) => Some(s),
            _ => None,
        })
        .ok_or(close)
}

/// Ejects what is in the session's drive; the session's close says how it
/// went (1000: ejected, or the drive was empty).
pub async fn eject(ws: Ws) -> Close {
    // The agent waits up to 30 s for the medium to leave.
    ask(ws, Item::Eject, Duration::from_secs(45)).await.1
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pattern(u64);
    impl Image for Pattern {
        fn size(&self) -> u64 {
            self.0
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = ((offset + i as u64) % 251) as u8;
            }
            Ok(())
        }
    }

    #[test]
    fn a_read_s_reply_is_cut_into_messages_that_carry_the_header_then_the_data() {
        let img = Pattern(10 << 20);
        let len = (media::MAX_NBD * 2 + 100) as u32;
        let msgs = read_reply_messages(&img, 7, 1000, len).unwrap();
        assert_eq!(msgs.len(), 3);
        let mut stream = Vec::new();
        let mut d = Decoder::new(Direction::ClientToAgent);
        let mut items = Vec::new();
        for m in msgs {
            assert!(m.len() <= media::HEADER_LEN + media::MAX_NBD);
            d.feed(m, &mut items).unwrap();
        }
        for i in items {
            let Item::Nbd(b) = i else { panic!() };
            stream.extend_from_slice(&b);
        }
        assert_eq!(&stream[..16], &read_reply(7));
        let data = &stream[16..];
        assert_eq!(data.len(), len as usize);
        assert!(data
            .iter()
            .enumerate()
            .all(|(i, b)| *b == ((1000 + i as u64) % 251) as u8));
    }
}
