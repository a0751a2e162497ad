use super::*;
use proptest::prelude::*;

const HANDSHAKE: &[u8] = b"RFB 003.008\n\x01\x00";

/// One of each message a viewer may send, with its kind.
fn messages() -> Vec<(Kind, Vec<u8>)> {
    let mut cut = vec![6, 0, 0, 0, 0, 0, 0, 5];
    cut.extend_from_slice(b"hello");
    let mut ext_cut = vec![6, 0, 0, 0];
    ext_cut.extend_from_slice(&(-4i32).to_be_bytes());
    ext_cut.extend_from_slice(&[0x10, 0, 0, 1]);
    let mut enc = vec![2, 0, 0, 3];
    for e in [0i32, 16, -223] {
        enc.extend_from_slice(&e.to_be_bytes());
    }
    let mut fence = vec![248, 0, 0, 0, 0, 0, 0, 1, 3];
    fence.extend_from_slice(b"abc");
    let mut desk = vec![251, 0, 0x04, 0, 0x03, 0, 1, 0];
    desk.extend_from_slice(&[0; 16]);
    vec![
        (
            Kind::SetPixelFormat,
            [vec![0; 4], vec![32, 24, 0, 1], vec![0; 12]].concat(),
        ),
        (Kind::SetEncodings, enc),
        (
            Kind::FramebufferUpdateRequest,
            vec![3, 1, 0, 0, 0, 0, 2, 208, 1, 144],
        ),
        (Kind::KeyEvent, vec![4, 1, 0, 0, 0, 0, 0, 0x61]),
        (Kind::PointerEvent, vec![5, 1, 0, 10, 0, 20]),
        (Kind::ClientCutText, cut),
        (Kind::ClientCutText, ext_cut),
        (
            Kind::EnableContinuousUpdates,
            vec![150, 1, 0, 0, 0, 0, 0, 10, 0, 10],
        ),
        (Kind::Fence, fence),
        (Kind::Xvp, vec![250, 0, 1, 3]),
        (Kind::SetDesktopSize, desk),
        (Kind::Gii, vec![253, 0x81, 0, 2, 0xaa, 0xbb]),
        (Kind::Gii, vec![253, 0x01, 2, 0, 0xaa, 0xbb]),
        (
            Kind::QemuExtendedKeyEvent,
            vec![255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e],
        ),
        (Kind::QemuAudio, vec![255, 1, 0, 0]),
        (Kind::QemuAudio, vec![255, 1, 0, 1]),
        (Kind::QemuAudio, vec![255, 1, 0, 2, 3, 2, 0, 0, 0xac, 0x44]),
    ]
}

fn stream() -> Vec<u8> {
    let mut s = HANDSHAKE.to_vec();
    for (_, m) in messages() {
        s.extend_from_slice(&m);
    }
    s
}

/// The complete messages (kind, length) in `data` fed in `cuts`.
fn parse_in(data: &[u8], cuts: &[usize]) -> Result<Vec<(Kind, usize)>, RfbError> {
    let mut p = ClientParser::new();
    let mut msgs = Vec::new();
    let mut cur = 0;
    let mut at = 0;
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c < data.len()).collect();
    bounds.sort_unstable();
    bounds.push(data.len());
    for b in bounds {
        let mut fed = 0;
        p.feed(&data[at..b], |s| {
            fed += s.len;
            cur += s.len;
            if s.end {
                msgs.push((s.kind, cur));
                cur = 0;
            }
        })?;
        assert_eq!(fed, b - at, "spans cover what was fed");
        at = b;
    }
    Ok(msgs)
}

#[test]
fn every_message_is_found_with_its_kind_and_length() {
    let msgs = parse_in(&stream(), &[]).unwrap();
    let mut want = vec![
        (Kind::ProtocolVersion, 12),
        (Kind::SecurityType, 1),
        (Kind::ClientInit, 1),
    ];
    want.extend(messages().into_iter().map(|(k, m)| (k, m.len())));
    assert_eq!(msgs, want);
}

#[test]
fn byte_by_byte_gives_the_same_messages() {
    let s = stream();
    let all: Vec<usize> = (1..s.len()).collect();
    assert_eq!(parse_in(&s, &all).unwrap(), parse_in(&s, &[]).unwrap());
}

#[test]
fn vnc_auth_and_rfb_3_3_handshakes() {
    let mut auth = b"RFB 003.008\n\x02".to_vec();
    auth.extend_from_slice(&[7; 16]);
    auth.extend_from_slice(&[0, 4, 1, 0, 0, 0, 0, 0, 0x61]);
    let kinds: Vec<Kind> = parse_in(&auth, &[])
        .unwrap()
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(
        kinds,
        [
            Kind::ProtocolVersion,
            Kind::SecurityType,
            Kind::VncAuthResponse,
            Kind::ClientInit,
            Kind::KeyEvent
        ]
    );
    // 3.3: the server picks the security type, the client goes on to ClientInit.
    let old = b"RFB 003.003\n\x01\x05\x00\x00\x01\x00\x01";
    let kinds: Vec<Kind> = parse_in(old, &[])
        .unwrap()
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(
        kinds,
        [Kind::ProtocolVersion, Kind::ClientInit, Kind::PointerEvent]
    );
}

#[test]
fn malformed_input_is_refused_with_its_cause() {
    let err = |b: &[u8]| parse_in(b, &[]).unwrap_err();
    assert!(matches!(err(b"GET / HTTP/1.1\r\n"), RfbError::Version(_)));
    assert!(matches!(err(b"RFB 004.000\n"), RfbError::Version(_)));
    assert_eq!(err(b"RFB 003.008\n\x13"), RfbError::SecurityType(19));
    let msg = |m: &[u8]| [HANDSHAKE, m].concat();
    assert_eq!(err(&msg(&[200])), RfbError::MessageType(200));
    assert_eq!(err(&msg(&[255, 7])), RfbError::QemuSubtype(7));
    assert_eq!(err(&msg(&[255, 1, 0, 9])), RfbError::QemuSubtype(0x109));
    assert_eq!(
        err(&msg(&[6, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff])),
        RfbError::CutTextTooLong(0x7fff_ffff)
    );
    assert_eq!(
        err(&msg(&[6, 0, 0, 0, 0x80, 0, 0, 0])),
        RfbError::CutTextTooLong(0x8000_0000)
    );
    assert_eq!(
        err(&msg(&[248, 0, 0, 0, 0, 0, 0, 0, 65])),
        RfbError::FenceTooLong(65)
    );
    // Once broken, always broken: nothing more is passed.
    let mut p = ClientParser::new();
    assert!(p.feed(b"RFB 003.008\n\x01\x01\xc8", |_| {}).is_err());
    assert!(p.feed(&[3; 10], |_| panic!("span after an error")).is_err());
}

#[test]
fn a_large_paste_streams_without_being_buffered() {
    let mut p = ClientParser::new();
    p.feed(HANDSHAKE, |_| {}).unwrap();
    let len = MAX_CUT_TEXT;
    let mut head = vec![6, 0, 0, 0];
    head.extend_from_slice(&len.to_be_bytes());
    let mut spans = Vec::new();
    p.feed(&head, |s| spans.push(s)).unwrap();
    for _ in 0..len / 4096 {
        p.feed(&[b'x'; 4096], |s| spans.push(s)).unwrap();
    }
    assert_eq!(spans.iter().map(|s| s.len).sum::<usize>(), 8 + len as usize);
    assert_eq!(spans.iter().filter(|s| s.end).count(), 1);
    assert!(spans.last().unwrap().end);
    assert!(spans.iter().all(|s| s.kind == Kind::ClientCutText));
}

#[test]
fn read_only_filter_keeps_only_non_input_and_forces_shared() {
    let mut s = b"RFB 003.008\n\x01\x00".to_vec();
    let mut kept = b"RFB 003.008\n\x01\x01".to_vec();
    let mut inputs = 0;
    for (k, m) in messages() {
        s.extend_from_slice(&m);
        if k.is_input() {
            inputs += 1;
        } else {
            kept.extend_from_slice(&m);
        }
    }
    // Whatever the chunking, the same bytes pass.
    for chunk in [1, 3, 7, s.len()] {
        let mut f = ClientFilter::new(true);
        let mut out = Vec::new();
        for c in s.chunks(chunk) {
            out.extend_from_slice(&f.filter(Bytes::copy_from_slice(c)).unwrap());
        }
        assert_eq!(out, kept, "chunk size {chunk}");
        assert_eq!(f.dropped, inputs);
    }
}

#[test]
fn interactive_filter_passes_the_same_buffer_after_the_handshake() {
    let mut f = ClientFilter::new(false);
    let hs = f.filter(Bytes::from_static(HANDSHAKE)).unwrap();
    assert_eq!(
        &hs[..],
        b"RFB 003.008\n\x01\x01",
        "ClientInit forced shared"
    );
    for (_, m) in messages() {
        let b = Bytes::from(m);
        let out = f.filter(b.clone()).unwrap();
        assert_eq!(out.as_ptr(), b.as_ptr(), "no copy on the hot path");
        assert_eq!(out, b);
    }
    assert_eq!(f.dropped, 0);
}

proptest! {
    #[test]
    fn any_chunking_gives_the_same_messages(cuts in proptest::collection::vec(0usize..400, 0..20)) {
        let s = stream();
        prop_assert_eq!(parse_in(&s, &cuts).unwrap(), parse_in(&s, &[]).unwrap());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_spans_cover_the_input(
        tail in proptest::collection::vec(any::<u8>(), 0..300),
        cut in 0usize..300,
    ) {
        let data = [HANDSHAKE, &tail].concat();
        let mut p = ClientParser::new();
        let cut = cut.min(data.len());
        for part in [&data[..cut], &data[cut..]] {
            let mut fed = 0;
            match p.feed(part, |s| fed += s.len) {
                Ok(()) => prop_assert_eq!(fed, part.len()),
                Err(_) => { prop_assert!(fed <= part.len()); break; }
            }
        }
        let mut f = ClientFilter::new(true);
        if let Ok(out) = f.filter(Bytes::from(data.clone())) {
            prop_assert!(out.len() <= data.len());
        }
    }
}
