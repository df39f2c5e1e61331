//! How publications go on the wire for each client protocol a WebSocket connection can speak.
//! The hub's fan-out calls each codec once per publication and shares the bytes among every
//! member speaking it.
//!
//! - [`Protocol::Raw`]: the message itself in one text or binary frame, as plain
//!   `new WebSocket(url)` clients expect.

use bytes::Bytes;

use super::frame::{self, OpCode};
use crate::broker::{Kind, Publication};
use crate::hub::Codec;

/// A client protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Raw,
}

impl Protocol {
    pub fn codec(self) -> &'static dyn Codec {
        match self {
            Protocol::Raw => &RAW,
        }
    }
}

/// Bare payloads: the message in one frame.
#[derive(Debug)]
pub struct Raw;

pub static RAW: Raw = Raw;

impl Codec for Raw {
    fn name(&self) -> &'static str {
        "raw"
    }

    fn encode(&self, p: &Publication) -> Bytes {
        let op = match p.kind {
            Kind::Text => OpCode::Text,
            Kind::Binary => OpCode::Binary,
        };
        frame::encode(op, &p.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_puts_the_message_in_one_frame_of_its_kind() {
        let p = Publication::new("g", Bytes::from_static(b"hi"), Kind::Text);
        assert_eq!(&RAW.encode(&p)[..], b"\x81\x02hi");
        let p = Publication::new("g", Bytes::from_static(b"\x00"), Kind::Binary);
        assert_eq!(&RAW.encode(&p)[..], b"\x82\x01\x00");
    }
}
