//! The tools channel's frames as the host reads them from the guest's
//! husk-vm-tools (husk-proto's `tools`, read by the shim's
//! vm_image/tools.rs): the decoder must hand out only whole frames within
//! the format's bound, in order, each what its bytes say, resync after an
//! error without looping, and never panic; the payload decoders (a u32,
//! a terminal size, an Open) must take exactly what the format allows.
//! Input: byte 0 is the size of the pieces the stream arrives in (1-256),
//! the rest the stream.

#![no_main]

use husk_fuzz::Input;
use husk_proto::tools::{decode_size, decode_u32, encode, Decoder, Open, MAX_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let piece = usize::from(input.u8()) + 1;
    let stream = input.rest();
    let mut decoder = Decoder::default();
    let mut errors = 0usize;
    for chunk in stream.chunks(piece) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.payload.len() <= MAX_PAYLOAD);
                    // What was read is what the frame says.
                    let again = encode(f.kind, f.session, &f.payload);
                    let mut d = Decoder::default();
                    d.push(&again);
                    assert_eq!(d.next_frame().unwrap().as_ref(), Some(&f));
                    if let Ok(n) = decode_u32(&f) {
                        assert_eq!(f.payload, n.to_be_bytes());
                    }
                    if decode_size(&f).is_ok() {
                        assert_eq!(f.payload.len(), 4);
                    }
                    if let Ok(open) = Open::decode(&f.payload) {
                        assert!(!open.args.is_empty());
                        assert_eq!(Open::decode(&open.encode().unwrap()).unwrap(), open);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    errors += 1;
                    assert!(errors <= stream.len(), "resync makes no progress");
                    decoder.resync();
                }
            }
        }
    }
});
