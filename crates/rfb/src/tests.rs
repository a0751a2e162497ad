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
    assert_eq!(err(&msg(&[255, 1, 0, 9])), RfbError::AudioOp(9));
    let set_format = |f: u8, ch: u8, rate: u32| {
        let mut m = vec![255, 1, 0, 2, f, ch];
        m.extend_from_slice(&rate.to_be_bytes());
        msg(&m)
    };
    assert_eq!(
        err(&set_format(6, 2, 44_100)),
        RfbError::AudioSampleFormat(6)
    );
    assert_eq!(err(&set_format(3, 0, 44_100)), RfbError::AudioChannels(0));
    assert_eq!(err(&set_format(3, 3, 44_100)), RfbError::AudioChannels(3));
    assert_eq!(err(&set_format(3, 2, 0)), RfbError::AudioRate(0));
    assert_eq!(err(&set_format(3, 2, 48_001)), RfbError::AudioRate(48_001));
    assert!(parse_in(&set_format(3, 2, 48_000), &[]).is_ok());
    assert_eq!(
        err(&msg(&[2, 0, 0x04, 0x01])),
        RfbError::TooManyEncodings(1025)
    );
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

const READ_ONLY_LISTENER: Policy = Policy {
    read_only: true,
    audio: true,
};
const INTERACTIVE_WITH_AUDIO: Policy = Policy {
    read_only: false,
    audio: true,
};

/// All of `data` through a filter with `policy`, in chunks of `chunk`.
fn filter_all(policy: Policy, data: &[u8], chunk: usize) -> (Vec<u8>, Dropped) {
    let mut f = ClientFilter::new(policy);
    let mut out = Vec::new();
    for c in data.chunks(chunk.max(1)) {
        out.extend_from_slice(&f.filter(Bytes::copy_from_slice(c)).unwrap());
    }
    (out, f.dropped)
}

fn set_encodings(encodings: &[i32]) -> Vec<u8> {
    audio::set_encodings_message(encodings)
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
    // Whatever the chunking, the same bytes pass. Audio control is not
    // input: a read-only viewer with the audio scope listens.
    for chunk in [1, 3, 7, s.len()] {
        let (out, dropped) = filter_all(READ_ONLY_LISTENER, &s, chunk);
        assert_eq!(out, kept, "chunk size {chunk}");
        assert_eq!(dropped.input, inputs);
        assert_eq!(dropped.audio, 0);
    }
    assert!(
        kept.windows(4).any(|w| w == [255, 1, 0, 0]),
        "audio enable kept"
    );
}

#[test]
fn without_the_audio_scope_minus_259_is_stripped_and_audio_messages_dropped() {
    let mut s = HANDSHAKE.to_vec();
    let mut want = b"RFB 003.008\n\x01\x01".to_vec();
    let key = [4, 1, 0, 0, 0, 0, 0, 0x61];
    let ext_key = [255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e];
    for (m, kept) in [
        (
            set_encodings(&[7, AUDIO_ENCODING, 0, -258]),
            set_encodings(&[7, 0, -258]),
        ),
        (set_encodings(&[AUDIO_ENCODING]), set_encodings(&[])),
        (set_encodings(&[16, 0]), set_encodings(&[16, 0])),
        (
            AudioFormat::QEMU_DEFAULT.set_format_message().to_vec(),
            vec![],
        ),
        (audio::control_message(audio::OP_ENABLE).to_vec(), vec![]),
        (key.to_vec(), key.to_vec()),
        (ext_key.to_vec(), ext_key.to_vec()),
        (audio::control_message(audio::OP_DISABLE).to_vec(), vec![]),
    ] {
        s.extend_from_slice(&m);
        want.extend_from_slice(&kept);
    }
    for policy in [
        Policy::default(),
        Policy {
            read_only: true,
            audio: false,
        },
    ] {
        for chunk in [1, 2, 3, 5, 7, s.len()] {
            let (out, dropped) = filter_all(policy, &s, chunk);
            let want: Vec<u8> = if policy.read_only {
                // The key events go too.
                let mut w = want.clone();
                for input in [&key[..], &ext_key[..]] {
                    let at = w.windows(input.len()).position(|x| x == input).unwrap();
                    w.drain(at..at + input.len());
                }
                w
            } else {
                want.clone()
            };
            assert_eq!(out, want, "{policy:?}, chunk size {chunk}");
            assert_eq!(dropped.audio, 3, "{policy:?}");
            assert_eq!(dropped.audio_encodings, 2, "{policy:?}");
            assert_eq!(dropped.input, if policy.read_only { 2 } else { 0 });
        }
    }
    // With the scope, everything passes as it came.
    let (out, dropped) = filter_all(INTERACTIVE_WITH_AUDIO, &s, 3);
    assert_eq!(out[14..], s[14..]);
    assert_eq!(dropped, Dropped::default());
}

#[test]
fn a_qemu_message_is_held_until_its_subtype_tells_what_it_is() {
    let mut f = ClientFilter::new(READ_ONLY_LISTENER);
    f.filter(Bytes::from_static(HANDSHAKE)).unwrap();
    // The type byte alone could be a key event or audio: held back.
    assert!(f.filter(Bytes::from_static(&[255])).unwrap().is_empty());
    assert_eq!(
        &f.filter(Bytes::from_static(&[1, 0, 0])).unwrap()[..],
        &[255, 1, 0, 0]
    );
    assert!(f.filter(Bytes::from_static(&[255])).unwrap().is_empty());
    assert!(f
        .filter(Bytes::from_static(&[0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e]))
        .unwrap()
        .is_empty());
    assert_eq!(f.dropped.input, 1);
    // A SetEncodings is held whole only without the scope.
    let enc = set_encodings(&[0, AUDIO_ENCODING]);
    let mut f = ClientFilter::new(Policy::default());
    f.filter(Bytes::from_static(HANDSHAKE)).unwrap();
    assert!(f
        .filter(Bytes::copy_from_slice(&enc[..6]))
        .unwrap()
        .is_empty());
    assert_eq!(
        &f.filter(Bytes::copy_from_slice(&enc[6..])).unwrap()[..],
        &set_encodings(&[0])[..]
    );
}

#[test]
fn interactive_filter_passes_the_same_buffer_after_the_handshake() {
    let mut f = ClientFilter::new(INTERACTIVE_WITH_AUDIO);
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
    assert_eq!(f.dropped, Dropped::default());
    // Without the audio scope too, for everything but audio.
    let mut f = ClientFilter::new(Policy::default());
    f.filter(Bytes::from_static(HANDSHAKE)).unwrap();
    for (k, m) in messages() {
        if k == Kind::QemuAudio || k == Kind::SetEncodings {
            continue;
        }
        let b = Bytes::from(m);
        assert_eq!(f.filter(b.clone()).unwrap().as_ptr(), b.as_ptr());
    }
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
        for policy in [Policy::default(), READ_ONLY_LISTENER, Policy { read_only: true, audio: false }] {
            let mut f = ClientFilter::new(policy);
            if let Ok(out) = f.filter(Bytes::from(data.clone())) {
                prop_assert!(out.len() <= data.len());
            }
        }
    }

    /// Whatever a viewer sends and however it is cut: without the scope no
    /// audio and no −259 come out, a read-only viewer's input never does,
    /// and the output does not depend on the chunking.
    #[test]
    fn the_policy_holds_for_any_messages_and_chunking(
        picks in proptest::collection::vec(0usize..64, 0..40),
        encodings in proptest::collection::vec(
            prop_oneof![Just(AUDIO_ENCODING), any::<i32>()], 0..12),
        cuts in proptest::collection::vec(0usize..2000, 0..30),
        read_only in any::<bool>(),
        audio in any::<bool>(),
    ) {
        let pool = messages();
        let mut s = HANDSHAKE.to_vec();
        for p in picks {
            if p >= pool.len() {
                s.extend_from_slice(&set_encodings(&encodings));
            } else {
                s.extend_from_slice(&pool[p].1);
            }
        }
        let policy = Policy { read_only, audio };
        let (whole, _) = filter_all(policy, &s, s.len());
        let mut f = ClientFilter::new(policy);
        let mut out = Vec::new();
        let mut at = 0;
        let mut bounds: Vec<usize> = cuts.into_iter().filter(|&c| c < s.len()).collect();
        bounds.sort_unstable();
        bounds.push(s.len());
        for b in bounds {
            out.extend_from_slice(&f.filter(Bytes::copy_from_slice(&s[at..b])).unwrap());
            at = b;
        }
        prop_assert_eq!(&out, &whole);
        // What passed, parsed again.
        let mut p = ClientParser::new();
        let mut cur = Vec::new();
        let mut seen = Vec::new();
        p.feed(&out, |sp| seen.push(sp)).unwrap();
        let mut at = 0;
        for sp in seen {
            cur.extend_from_slice(&out[at..at + sp.len]);
            at += sp.len;
            if !sp.end {
                continue;
            }
            prop_assert!(!(read_only && sp.kind.is_input()), "input passed: {:?}", sp.kind);
            prop_assert!(audio || sp.kind != Kind::QemuAudio, "audio passed");
            if sp.kind == Kind::SetEncodings && !audio {
                prop_assert!(cur[4..].chunks(4).all(|e| e != AUDIO_ENCODING.to_be_bytes()));
            }
            cur.clear();
        }
    }
}

mod server {
    use super::super::server::*;
    use super::super::*;
    use proptest::prelude::*;

    /// What QEMU sends an audio-only client: handshake, the −259
    /// acknowledgement, a stream, and a few messages it does not use.
    fn stream(pcm: &[u8]) -> Vec<u8> {
        let mut s = b"RFB 003.008\n".to_vec();
        s.extend_from_slice(&[2, 2, 1]); // VNC auth and None offered
        s.extend_from_slice(&0u32.to_be_bytes());
        s.extend_from_slice(&[0x02, 0x80, 0x01, 0xe0]); // 640x480
        s.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        s.extend_from_slice(&4u32.to_be_bytes());
        s.extend_from_slice(b"demo");
        s.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x02, 0x80, 0x01, 0xe0]);
        s.extend_from_slice(&AUDIO_ENCODING.to_be_bytes());
        s.extend_from_slice(&[255, 1, 0, 1]); // begin
        s.extend_from_slice(&[255, 1, 0, 2]);
        s.extend_from_slice(&(pcm.len() as u32).to_be_bytes());
        s.extend_from_slice(pcm);
        s.extend_from_slice(&[2]); // bell
        s.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
        s.extend_from_slice(&[255, 1, 0, 2, 0, 0, 0, 0]); // empty data
        s.extend_from_slice(&[255, 1, 0, 0]); // end
                                              // An update with an LED state, a 2x1 raw rectangle, and LastRect.
        s.extend_from_slice(&[0, 0, 0, 9]);
        s.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0, 1]);
        s.extend_from_slice(&(-261i32).to_be_bytes());
        s.push(3);
        s.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0]);
        s.extend_from_slice(&[9; 8]);
        s.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        s.extend_from_slice(&(-224i32).to_be_bytes());
        s.extend_from_slice(&[255, 1, 0, 1]);
        s
    }

    /// Where [`stream`]'s handshake ends: version, security types, result,
    /// ServerInit and its four-byte name.
    const HANDSHAKE_LEN: usize = 12 + 3 + 4 + 24 + 4;

    /// Events as owned values (PCM joined), parsing `data` cut at `cuts`.
    fn events(data: &[u8], cuts: &[usize]) -> Result<(Vec<String>, Vec<u8>), RfbError> {
        let mut p = ServerParser::new();
        let mut names = Vec::new();
        let mut pcm = Vec::new();
        let mut at = 0;
        let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c < data.len()).collect();
        bounds.sort_unstable();
        bounds.push(data.len());
        for b in bounds {
            p.feed(&data[at..b], |e| match e {
                ServerEvent::AudioData(d) => pcm.extend_from_slice(d),
                e => names.push(format!("{e:?}")),
            })?;
            at = b;
        }
        Ok((names, pcm))
    }

    #[test]
    fn an_audio_clients_stream_is_followed_and_pcm_handed_out() {
        let pcm: Vec<u8> = (0..=255).cycle().take(4000).collect();
        let s = stream(&pcm);
        let (names, got) = events(&s, &[]).unwrap();
        assert_eq!(
            names,
            [
                "Ready { width: 640, height: 480 }",
                "Rect { encoding: -259 }",
                "AudioBegin",
                "Other(\"bell\")",
                "Other(\"clipboard\")",
                "AudioEnd",
                "Rect { encoding: -261 }",
                "Rect { encoding: 0 }",
                "Rect { encoding: -224 }",
                "AudioBegin",
            ]
        );
        assert_eq!(got, pcm);
        let all: Vec<usize> = (1..s.len()).collect();
        assert_eq!(events(&s, &all).unwrap(), (names, got));
    }

    #[test]
    fn a_server_that_breaks_the_rules_is_refused_with_its_cause() {
        let ok = stream(&[]);
        let at = |tail: &[u8]| [&ok[..HANDSHAKE_LEN], tail].concat();
        let err = |b: &[u8]| events(b, &[]).unwrap_err();
        assert!(matches!(err(b"RFB 003.003\n"), RfbError::Version(_)));
        assert_eq!(err(b"RFB 003.008\n\x00"), RfbError::SecurityRefused);
        assert_eq!(err(b"RFB 003.008\n\x01\x02"), RfbError::NoSecurityNone);
        assert_eq!(
            err(b"RFB 003.008\n\x01\x01\x00\x00\x00\x01"),
            RfbError::SecurityFailed(1)
        );
        assert_eq!(err(&at(&[7])), RfbError::ServerMessageType(7));
        assert_eq!(err(&at(&[255, 2, 0, 0])), RfbError::QemuSubtype(2));
        assert_eq!(err(&at(&[255, 1, 0, 3])), RfbError::AudioOp(3));
        assert_eq!(
            err(&at(&[255, 1, 0, 2, 0, 0x10, 0, 1])),
            RfbError::AudioDataTooLong(0x10_0001)
        );
        let mut zrle = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1];
        zrle.extend_from_slice(&16i32.to_be_bytes());
        assert_eq!(err(&at(&zrle)), RfbError::Encoding(16));
        // Once broken, always broken.
        let mut p = ServerParser::new();
        assert!(p.feed(&at(&[7]), |_| {}).is_err());
        assert!(p.feed(&[2], |_| panic!("event after an error")).is_err());
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_events(
            cuts in proptest::collection::vec(0usize..3000, 0..30),
            len in 0usize..2000,
        ) {
            let pcm: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let s = stream(&pcm);
            prop_assert_eq!(events(&s, &cuts).unwrap(), events(&s, &[]).unwrap());
        }

        #[test]
        fn arbitrary_server_bytes_never_panic_and_pcm_is_never_more_than_fed(
            tail in proptest::collection::vec(any::<u8>(), 0..400),
            cut in 0usize..500,
        ) {
            let ok = stream(&[]);
            let data = [&ok[..HANDSHAKE_LEN], &tail].concat();
            let cut = cut.min(data.len());
            if let Ok((_, pcm)) = events(&data, &[cut]) {
                prop_assert!(pcm.len() <= data.len());
            }
        }
    }
}

/// The screen as a splice follows it: every encoding a spliceable session
/// can get, where each message ends, and the viewer's side of a cut.
mod screen {
    use super::super::server::*;
    use super::super::*;
    use proptest::prelude::*;

    /// A server message a spliceable viewer may get.
    #[derive(Debug, Clone)]
    enum Msg {
        Raw(u16, u16),
        CopyRect,
        Rre(u8),
        /// Width, height, and one subencoding byte per tile (cycled).
        Hextile(u16, u16, Vec<u8>),
        Cursor(u16, u16),
        XCursor(u16, u16),
        Screens(u8),
        Name(u16),
        DesktopSize(u16, u16),
        Leds,
        Bell,
        Clipboard(u16),
        /// Tight: a fill with these reset bits.
        TightFill(u8),
        /// Tight: a JPEG image of this many bytes.
        TightJpeg(u32),
        /// Tight, basic compression.
        TightBasic(Basic),
    }

    /// A Tight rectangle in basic compression.
    #[derive(Debug, Clone)]
    struct Basic {
        w: u16,
        h: u16,
        /// Stream id and reset bits, as in the control byte.
        stream: u8,
        reset: u8,
        /// No filter id (None), or 0 copy, 1 palette, 2 gradient.
        filter: Option<u8>,
        /// The palette's colours (1 to 256).
        colours: u16,
        /// The compressed length, when the data is 12 bytes or more.
        zlen: u32,
    }

    /// A Tight compact length.
    fn compact(o: &mut Vec<u8>, n: u32) {
        if n < 1 << 7 {
            o.push(n as u8);
        } else if n < 1 << 14 {
            o.extend_from_slice(&[(n & 0x7f) as u8 | 0x80, (n >> 7) as u8]);
        } else {
            o.extend_from_slice(&[
                (n & 0x7f) as u8 | 0x80,
                ((n >> 7) & 0x7f) as u8 | 0x80,
                (n >> 14) as u8,
            ]);
        }
    }

    fn rect(out: &mut Vec<u8>, w: u16, h: u16, enc: i32) {
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&w.to_be_bytes());
        out.extend_from_slice(&h.to_be_bytes());
        out.extend_from_slice(&enc.to_be_bytes());
    }

    /// The message's bytes with `bpp` bytes per pixel; an update has one
    /// rectangle, and a LastRect after it when `last_rect`.
    fn bytes(m: &Msg, bpp: usize, last_rect: bool) -> Vec<u8> {
        tight_bytes(m, bpp, bpp, last_rect)
    }

    /// The same, with `tpixel` bytes per Tight pixel.
    fn tight_bytes(m: &Msg, bpp: usize, tpixel: usize, last_rect: bool) -> Vec<u8> {
        let mut o = Vec::new();
        let update = |o: &mut Vec<u8>| {
            o.extend_from_slice(&[0, 0]);
            o.extend_from_slice(&(if last_rect { 0xffffu16 } else { 1 }).to_be_bytes());
        };
        match m {
            Msg::Bell => return vec![2],
            Msg::Clipboard(n) => {
                o.extend_from_slice(&[3, 0, 0, 0]);
                o.extend_from_slice(&u32::from(*n).to_be_bytes());
                o.resize(o.len() + usize::from(*n), b'x');
                return o;
            }
            _ => update(&mut o),
        }
        let px = |o: &mut Vec<u8>, n: usize| o.resize(o.len() + n * bpp, 7);
        match m {
            Msg::Raw(w, h) => {
                rect(&mut o, *w, *h, 0);
                px(&mut o, usize::from(*w) * usize::from(*h));
            }
            Msg::CopyRect => {
                rect(&mut o, 5, 5, 1);
                o.extend_from_slice(&[0, 1, 0, 2]);
            }
            Msg::Rre(n) => {
                rect(&mut o, 30, 30, 2);
                o.extend_from_slice(&u32::from(*n).to_be_bytes());
                px(&mut o, 1);
                for _ in 0..*n {
                    px(&mut o, 1);
                    o.extend_from_slice(&[0, 1, 0, 1, 0, 2, 0, 2]);
                }
            }
            Msg::Hextile(w, h, subs) => {
                rect(&mut o, *w, *h, 5);
                let (w, h) = (usize::from(*w), usize::from(*h));
                let mut i = 0;
                for ty in (0..h).step_by(16) {
                    for tx in (0..w).step_by(16) {
                        let (tw, th) = ((w - tx).min(16), (h - ty).min(16));
                        let s = subs.get(i % subs.len().max(1)).copied().unwrap_or(1) & 0x1f;
                        i += 1;
                        o.push(s);
                        if s & 1 != 0 {
                            px(&mut o, tw * th);
                            continue;
                        }
                        if s & 2 != 0 {
                            px(&mut o, 1);
                        }
                        if s & 4 != 0 {
                            px(&mut o, 1);
                        }
                        if s & 8 != 0 {
                            let n = usize::from(s) % 5;
                            o.push(n as u8);
                            for _ in 0..n {
                                if s & 16 != 0 {
                                    px(&mut o, 1);
                                }
                                o.extend_from_slice(&[0x12, 0x34]);
                            }
                        }
                    }
                }
            }
            Msg::Cursor(w, h) => {
                rect(&mut o, *w, *h, -239);
                let (w, h) = (usize::from(*w), usize::from(*h));
                px(&mut o, w * h);
                o.resize(o.len() + w.div_ceil(8) * h, 0xff);
            }
            Msg::XCursor(w, h) => {
                rect(&mut o, *w, *h, -240);
                let (w, h) = (usize::from(*w), usize::from(*h));
                if w * h > 0 {
                    o.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
                    o.resize(o.len() + 2 * w.div_ceil(8) * h, 0x0f);
                }
            }
            Msg::Screens(n) => {
                rect(&mut o, 800, 600, -308);
                o.extend_from_slice(&[*n, 0, 0, 0]);
                o.resize(o.len() + 16 * usize::from(*n), 1);
            }
            Msg::Name(n) => {
                rect(&mut o, 0, 0, -307);
                o.extend_from_slice(&u32::from(*n).to_be_bytes());
                o.resize(o.len() + usize::from(*n), b'n');
            }
            Msg::DesktopSize(w, h) => rect(&mut o, *w, *h, -223),
            Msg::Leds => {
                rect(&mut o, 0, 0, -261);
                o.push(2);
            }
            Msg::TightFill(reset) => {
                rect(&mut o, 40, 30, 7);
                o.push(0x80 | (reset & 0x0f));
                o.resize(o.len() + tpixel, 9);
            }
            Msg::TightJpeg(n) => {
                rect(&mut o, 64, 64, 7);
                o.push(0x90);
                compact(&mut o, *n);
                o.resize(o.len() + *n as usize, 0xd8);
            }
            Msg::TightBasic(b) => {
                rect(&mut o, b.w, b.h, 7);
                let flag = if b.filter.is_some() { 0x40 } else { 0 };
                o.push(((b.stream & 3) << 4) | flag | (b.reset & 0x0f));
                let (w, h) = (usize::from(b.w), usize::from(b.h));
                let mut raw = w * h * tpixel;
                if let Some(f) = b.filter {
                    o.push(f);
                    if f == 1 {
                        o.push((b.colours - 1) as u8);
                        o.resize(o.len() + usize::from(b.colours) * tpixel, 3);
                        raw = if b.colours <= 2 {
                            w.div_ceil(8) * h
                        } else {
                            w * h
                        };
                    }
                }
                if raw < 12 {
                    o.resize(o.len() + raw, 1);
                } else {
                    compact(&mut o, b.zlen);
                    o.resize(o.len() + b.zlen as usize, 0x78);
                }
            }
            Msg::Bell | Msg::Clipboard(_) => unreachable!(),
        }
        if last_rect {
            rect(&mut o, 0, 0, -224);
        }
        o
    }

    /// QEMU's handshake: 3.8, None, 720x400 at 32 bits per pixel, "vm".
    fn handshake() -> Vec<u8> {
        let mut s = b"RFB 003.008\n\x01\x01\0\0\0\0".to_vec();
        s.extend_from_slice(&[0x02, 0xd0, 0x01, 0x90]);
        s.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        s.extend_from_slice(&2u32.to_be_bytes());
        s.extend_from_slice(b"vm");
        s
    }

    /// Where the parser says a message ends, fed one byte at a time; the
    /// rectangle encodings seen.
    fn boundaries(p: &mut ServerParser, data: &[u8]) -> (Vec<usize>, Vec<i32>) {
        let (mut ends, mut encs) = (Vec::new(), Vec::new());
        for (i, b) in data.iter().enumerate() {
            p.feed(std::slice::from_ref(b), |e| {
                if let ServerEvent::Rect { encoding } = e {
                    encs.push(encoding)
                }
            })
            .unwrap();
            if p.at_message_boundary() {
                ends.push(i + 1);
            }
        }
        (ends, encs)
    }

    fn all() -> Vec<Msg> {
        vec![
            Msg::Raw(3, 2),
            Msg::CopyRect,
            Msg::Rre(3),
            // 2x2 tiles, the last ones narrower and shorter: raw, bg+fg,
            // coloured subrects, plain subrects, nothing at all.
            Msg::Hextile(20, 17, vec![1, 6, 0x1e, 8, 0]),
            Msg::Cursor(9, 3),
            Msg::XCursor(9, 3),
            Msg::XCursor(0, 0),
            Msg::Screens(2),
            Msg::Name(5),
            Msg::DesktopSize(640, 480),
            Msg::Leds,
            Msg::Bell,
            Msg::Clipboard(4),
            Msg::TightFill(0),
            Msg::TightJpeg(300),
            // Compact lengths of one, two and three bytes; data under 12
            // bytes sent as it is; each filter.
            Msg::TightBasic(Basic {
                w: 16,
                h: 16,
                stream: 0,
                reset: 0,
                filter: None,
                colours: 1,
                zlen: 100,
            }),
            Msg::TightBasic(Basic {
                w: 64,
                h: 64,
                stream: 1,
                reset: 2,
                filter: Some(0),
                colours: 1,
                zlen: 5000,
            }),
            Msg::TightBasic(Basic {
                w: 200,
                h: 100,
                stream: 2,
                reset: 0,
                filter: Some(2),
                colours: 1,
                zlen: 20000,
            }),
            Msg::TightBasic(Basic {
                w: 9,
                h: 5,
                stream: 3,
                reset: 0,
                filter: Some(1),
                colours: 2,
                zlen: 0,
            }),
            Msg::TightBasic(Basic {
                w: 3,
                h: 3,
                stream: 3,
                reset: 0,
                filter: Some(1),
                colours: 17,
                zlen: 0,
            }),
            Msg::TightBasic(Basic {
                w: 30,
                h: 20,
                stream: 2,
                reset: 0,
                filter: Some(1),
                colours: 256,
                zlen: 77,
            }),
            Msg::TightBasic(Basic {
                w: 1,
                h: 2,
                stream: 0,
                reset: 0,
                filter: None,
                colours: 1,
                zlen: 0,
            }),
        ]
    }

    #[test]
    fn every_spliceable_encoding_ends_where_it_should() {
        for last_rect in [false, true] {
            let mut p = ServerParser::new();
            let hs = handshake();
            let (ends, _) = boundaries(&mut p, &hs);
            assert_eq!(
                ends,
                [hs.len()],
                "the handshake's end is the first boundary"
            );
            let mut q = ServerParser::new();
            for b in &hs {
                assert!(!q.past_handshake());
                q.feed(std::slice::from_ref(b), |_| {}).unwrap();
            }
            assert!(q.past_handshake());
            assert_eq!(p.size(), (720, 400));
            let mut data = Vec::new();
            let mut want = Vec::new();
            for m in all() {
                // ServerInit's format: 32-bit true colour, depth 24.
                data.extend(tight_bytes(&m, 4, 3, last_rect));
                want.push(data.len());
            }
            let (ends, encs) = boundaries(&mut p, &data);
            assert_eq!(ends, want);
            let mut want_encs = vec![0, 1, 2, 5, -239, -240, -240, -308, -307, -223, -261];
            want_encs.extend([7; 9]);
            if last_rect {
                want_encs = want_encs.iter().flat_map(|&e| [e, -224]).collect();
            }
            assert_eq!(encs, want_encs);
            assert_eq!(p.size(), (640, 480), "DesktopSize was the last size");
        }
    }

    #[test]
    fn the_viewers_pixel_format_sets_the_pixel_size() {
        let mut p = ServerParser::new();
        p.feed(&handshake(), |_| {}).unwrap();
        let mut pf = [0; 16];
        pf[0] = 16;
        p.set_pixel_format(&pf);
        let m = bytes(&Msg::Hextile(17, 3, vec![1, 0x1e]), 2, false);
        let (ends, _) = boundaries(&mut p, &m);
        assert_eq!(ends, [m.len()]);
        pf[0] = 24;
        p.set_pixel_format(&pf);
        assert_eq!(p.error(), Some(&RfbError::BitsPerPixel(24)));
        assert!(!p.at_message_boundary());
    }

    #[test]
    fn stateful_encodings_are_refused_with_their_number() {
        for enc in [6, 16, -260] {
            let mut p = ServerParser::new();
            p.feed(&handshake(), |_| {}).unwrap();
            let mut m = vec![0, 0, 0, 1];
            rect(&mut m, 4, 4, enc);
            assert_eq!(p.feed(&m, |_| {}), Err(RfbError::Encoding(enc)));
            assert!(!p.at_message_boundary());
            assert!(!spliceable(enc, true));
        }
    }

    fn msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            (0u16..40, 0u16..40).prop_map(|(w, h)| Msg::Raw(w, h)),
            Just(Msg::CopyRect),
            (0u8..10).prop_map(Msg::Rre),
            (
                0u16..70,
                0u16..70,
                proptest::collection::vec(any::<u8>(), 1..8)
            )
                .prop_map(|(w, h, s)| Msg::Hextile(w, h, s)),
            (0u16..20, 0u16..20).prop_map(|(w, h)| Msg::Cursor(w, h)),
            (0u16..20, 0u16..20).prop_map(|(w, h)| Msg::XCursor(w, h)),
            (0u8..4).prop_map(Msg::Screens),
            (0u16..30).prop_map(Msg::Name),
            (any::<u16>(), any::<u16>()).prop_map(|(w, h)| Msg::DesktopSize(w, h)),
            Just(Msg::Leds),
            Just(Msg::Bell),
            (0u16..50).prop_map(Msg::Clipboard),
            any::<u8>().prop_map(Msg::TightFill),
            (0u32..20_000).prop_map(Msg::TightJpeg),
            (
                (0u16..300, 0u16..300, 0u8..4, any::<u8>()),
                (prop::option::of(0u8..3), 1u16..=256, 0u32..20_000)
            )
                .prop_map(|((w, h, stream, reset), (filter, colours, zlen))| {
                    Msg::TightBasic(Basic {
                        w,
                        h,
                        stream,
                        reset,
                        filter,
                        colours,
                        zlen,
                    })
                }),
        ]
    }

    /// A viewer's pixel format: 8, 16 or 32 bits per pixel, or 32-bit
    /// true colour of depth 24 with 8-bit channels (3-byte Tight pixels).
    fn format() -> impl Strategy<Value = ([u8; 16], usize, usize)> {
        prop_oneof![Just(8u8), Just(16), Just(32), Just(24)].prop_map(|bits| {
            let mut pf = [0; 16];
            if bits == 24 {
                pf = [32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0];
                return (pf, 4, 3);
            }
            pf[0] = bits;
            let bpp = usize::from(bits / 8);
            (pf, bpp, bpp)
        })
    }

    proptest! {
        /// Any sequence of spliceable messages, in any pixel size: the
        /// parser is between messages exactly where each one ends, and
        /// nowhere else.
        #[test]
        fn message_boundaries_are_exactly_the_message_ends(
            msgs in proptest::collection::vec((msg(), any::<bool>()), 0..12),
            (pf, bpp, tpixel) in format(),
        ) {
            let mut p = ServerParser::new();
            p.feed(&handshake(), |_| {}).unwrap();
            p.set_pixel_format(&pf);
            let mut data = Vec::new();
            let mut want = Vec::new();
            for (m, last) in &msgs {
                data.extend(tight_bytes(m, bpp, tpixel, *last));
                want.push(data.len());
            }
            let (ends, _) = boundaries(&mut p, &data);
            prop_assert_eq!(ends, want);
        }

        /// A stream cut anywhere and then read only to the next boundary
        /// stops exactly at the end of the message the cut fell in (or at
        /// the cut, if it fell between two), in any chunking.
        #[test]
        fn feeding_to_a_boundary_stops_at_the_end_of_the_message_under_way(
            msgs in proptest::collection::vec((msg(), any::<bool>()), 1..8),
            bits in prop_oneof![Just(8u8), Just(16), Just(32)],
            cut in any::<prop::sample::Index>(),
            chunk in 1usize..50,
        ) {
            let mut p = ServerParser::new();
            p.feed(&handshake(), |_| {}).unwrap();
            let mut pf = [0; 16];
            pf[0] = bits;
            p.set_pixel_format(&pf);
            let mut data = Vec::new();
            let mut ends = vec![0];
            for (m, last) in &msgs {
                data.extend(bytes(m, usize::from(bits / 8), *last));
                ends.push(data.len());
            }
            let cut = cut.index(data.len() + 1);
            p.feed(&data[..cut], |_| {}).unwrap();
            let want = *ends.iter().find(|e| **e >= cut).unwrap();
            let mut at = cut;
            let mut stopped = None;
            for piece in data[cut..].chunks(chunk) {
                match p.feed_to_boundary(piece, |_| {}).unwrap() {
                    Some(n) => {
                        stopped = Some(at + n);
                        break;
                    }
                    None => at += piece.len(),
                }
            }
            if cut == data.len() {
                stopped = p.feed_to_boundary(&[], |_| {}).unwrap().map(|n| cut + n);
            }
            prop_assert_eq!(stopped, Some(want));
            prop_assert!(p.at_message_boundary());
            // Stopped there: at a boundary it takes nothing more.
            prop_assert_eq!(p.feed_to_boundary(&data[want..], |_| {}).unwrap(), Some(0));
        }

        /// Arbitrary bytes after the handshake: no panic, and a boundary is
        /// never claimed on a broken stream.
        #[test]
        fn arbitrary_screen_bytes_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut p = ServerParser::new();
            p.feed(&handshake(), |_| {}).unwrap();
            if p.feed(&tail, |_| {}).is_err() {
                prop_assert!(!p.at_message_boundary());
            }
        }
    }

    /// After `reset_tight_streams`, the first Tight rectangle's control
    /// byte is reported at its offset in the chunk fed, once, wherever the
    /// chunks are cut; without it, never.
    #[test]
    fn the_first_tight_rectangle_after_a_reset_is_found_once() {
        let mut data = bytes(&Msg::Hextile(20, 17, vec![1, 6]), 4, false);
        let at = data.len() + 4 + 12;
        data.extend(tight_bytes(&all()[14], 4, 3, true));
        data.extend(tight_bytes(&all()[13], 4, 3, false));
        assert_eq!(data[at], 0x90, "the JPEG rectangle's control byte");
        for chunk in [1, 2, 7, 29, data.len()] {
            for reset in [false, true] {
                let mut p = ServerParser::new();
                p.feed(&handshake(), |_| {}).unwrap();
                if reset {
                    p.reset_tight_streams();
                }
                let mut found = Vec::new();
                for (i, c) in data.chunks(chunk).enumerate() {
                    p.feed(c, |e| {
                        if let ServerEvent::TightControl(o) = e {
                            found.push(i * chunk + o);
                        }
                    })
                    .unwrap();
                }
                assert!(p.at_message_boundary());
                assert_eq!(
                    found,
                    if reset { vec![at] } else { vec![] },
                    "chunk {chunk}"
                );
            }
        }
    }

    #[test]
    fn tight_rectangles_the_parser_cannot_follow_are_refused_with_why() {
        for (tail, want) in [
            (vec![0xa0], RfbError::TightControl(0xa0)),
            (vec![0xf3], RfbError::TightControl(0xf3)),
            (vec![0x40, 3], RfbError::TightFilter(3)),
        ] {
            let mut p = ServerParser::new();
            p.feed(&handshake(), |_| {}).unwrap();
            let mut m = vec![0, 0, 0, 1];
            rect(&mut m, 4, 4, 7);
            m.extend(tail);
            assert_eq!(p.feed(&m, |_| {}), Err(want));
            assert!(!p.at_message_boundary());
        }
    }

    const HS: &[u8] = b"RFB 003.008\n\x01\x00";

    fn spliceable_filter() -> ClientFilter {
        ClientFilter::new(Policy::default()).spliceable(false)
    }

    /// Tight, and its levels, only for a viewer that resets its streams.
    #[test]
    fn a_spliceable_viewer_gets_only_encodings_the_splice_follows() {
        for tight in [false, true] {
            spliceable_encodings(tight);
        }
    }

    fn spliceable_encodings(tight: bool) {
        let mut f = ClientFilter::new(Policy::default()).spliceable(tight);
        let mut s = HS.to_vec();
        let pf = [
            0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
        ];
        s.extend_from_slice(&pf);
        s.extend(audio::set_encodings_message(&[
            16, 7, 6, -260, 5, 0, -223, -259, -313, -26, -254, -247, -246,
        ]));
        let mut out = Vec::new();
        for c in s.chunks(3) {
            out.extend_from_slice(&f.filter(Bytes::copy_from_slice(c)).unwrap());
        }
        let mut want = b"RFB 003.008\n\x01\x01".to_vec();
        want.extend_from_slice(&pf);
        let kept = if tight {
            audio::set_encodings_message(&[7, 5, 0, -223, -26, -254, -247])
        } else {
            audio::set_encodings_message(&[5, 0, -223])
        };
        want.extend_from_slice(&kept);
        assert_eq!(out, want);
        assert_eq!(f.dropped.unspliceable_encodings, 1);
        assert_eq!(f.dropped.audio_encodings, 1);
        let v = f.viewer.as_ref().unwrap();
        assert_eq!(v.pixel_format().unwrap(), pf[4..]);
        assert_eq!(v.replay(1, 1)[20..20 + kept.len()], kept[..]);
    }

    #[test]
    fn a_cut_drops_the_rest_of_a_message_begun_on_the_old_server_only() {
        let mut f = spliceable_filter();
        f.filter(Bytes::from_static(HS)).unwrap();
        // A paste half sent to the old server: its rest goes nowhere, and
        // the key press after it reaches the new one.
        let paste = [6, 0, 0, 0, 0, 0, 0, 4, b'a', b'b'];
        assert_eq!(
            &f.filter(Bytes::copy_from_slice(&paste)).unwrap()[..],
            &paste
        );
        f.cut();
        let key = [4, 1, 0, 0, 0, 0, 0, 0x61];
        let rest = [&b"cd"[..], &key].concat();
        assert_eq!(&f.filter(Bytes::from(rest)).unwrap()[..], &key);
        assert_eq!(f.dropped.cut, 2);
        assert_eq!(f.dropped.input, 0);
        // A key event held back whole is not cut: it reaches the new server.
        assert!(f.filter(Bytes::from_static(&[4, 0, 0])).unwrap().is_empty());
        f.cut();
        let up = f.filter(Bytes::from_static(&[0, 0, 0, 0, 0x61])).unwrap();
        assert_eq!(&up[..], &[4, 0, 0, 0, 0, 0, 0, 0x61]);
        // Between messages a cut drops nothing.
        f.cut();
        assert_eq!(&f.filter(Bytes::copy_from_slice(&key)).unwrap()[..], &key);
        assert_eq!(f.dropped.cut, 2);
        assert_eq!(
            f.viewer.as_mut().unwrap().release(),
            [4, 1, 0, 0, 0, 0, 0, 0x61, 4, 0, 0, 0, 0, 0, 0, 0x61]
        );
    }
}

/// A read-only viewer's keys never reach a server, so a splice has none
/// to release for it: the new node gets no input from it either.
#[test]
fn a_read_only_spliceable_viewer_leaves_nothing_to_release() {
    let policy = Policy {
        read_only: true,
        audio: false,
    };
    let mut f = ClientFilter::new(policy).spliceable(false);
    let mut s = HANDSHAKE.to_vec();
    s.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0, 0x61]);
    s.extend_from_slice(&[5, 1, 0, 10, 0, 20]);
    s.extend_from_slice(&[255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e]);
    let out = f.filter(Bytes::from(s)).unwrap();
    assert_eq!(&out[..], b"RFB 003.008\n\x01\x01");
    assert_eq!(f.dropped.input, 3);
    let v = f.viewer.as_mut().unwrap();
    assert!(!v.holds_input());
    assert!(v.release().is_empty());
}
