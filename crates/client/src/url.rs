//! Every URL a vmgate client builds or reads, in one place.
//!
//! ```text
//! https://GW/console#ticket=T              the web console (ticket in the fragment)
//! wss://GW/ws/GUEST/CHANNEL?ticket=T       a console WebSocket [&force=true]
//!                                          [&tight=true: a screen whose viewer
//!                                          resets its Tight streams when told]
//! wss://ADMIN/v1/console/GUEST/CHANNEL     an administrator's console [?force=true]
//! ```
//!
//! Names are checked with [`vmgate_wire::valid_name`] and tickets for the
//! characters a ticket can have, so nothing built here ever needs escaping.

use crate::ClientError;

/// The scheme and authority of a gateway's base URL (`https://host[:port]`),
/// as a WebSocket URL's (`wss://host[:port]`).
fn ws_base(base: &str) -> Result<String, ClientError> {
    let base = base.trim_end_matches('/');
    let rest = base
        .strip_prefix("https://")
        .or_else(|| base.strip_prefix("wss://"))
        .ok_or_else(|| ClientError::Scheme(base.chars().take(40).collect()))?;
    if rest.is_empty() || rest.contains(['/', '?', '#']) {
        return Err(ClientError::Url(format!(
            "{base}: expected https://host[:port] with no path"
        )));
    }
    Ok(format!("wss://{rest}"))
}

fn check_name(name: &str) -> Result<&str, ClientError> {
    if vmgate_wire::valid_name(name) {
        Ok(name)
    } else {
        Err(ClientError::Name(name.chars().take(40).collect()))
    }
}

fn check_ticket(ticket: &str) -> Result<&str, ClientError> {
    let ok = !ticket.is_empty()
        && ticket.len() <= vmgate_ticket::MAX_TICKET_LEN
        && ticket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(ticket)
    } else {
        Err(ClientError::NotATicketUrl(
            "the ticket has characters no ticket has",
        ))
    }
}

/// The console WebSocket of `channel` on `guest`, at the gateway whose
/// public base URL is `base` (`https://host[:port]`).
pub fn ws_url(base: &str, guest: &str, channel: &str, ticket: &str) -> Result<String, ClientError> {
    Ok(format!(
        "{}/ws/{}/{}?ticket={}",
        ws_base(base)?,
        check_name(guest)?,
        check_name(channel)?,
        check_ticket(ticket)?
    ))
}

/// The web console for `ticket` at the gateway `base`. The ticket goes in
/// the fragment, which browsers never send to a server.
pub fn web_url(base: &str, ticket: &str) -> Result<String, ClientError> {
    ws_base(base)?;
    Ok(format!(
        "{}/console#ticket={}",
        base.trim_end_matches('/'),
        check_ticket(ticket)?
    ))
}

/// An administrator's console WebSocket on the admin listener at `admin`
/// (`https://host[:port]`): no ticket, the recovery path.
pub fn admin_console_url(
    admin: &str,
    guest: &str,
    channel: &str,
    force: bool,
) -> Result<String, ClientError> {
    let url = format!(
        "{}/v1/console/{}/{}",
        ws_base(admin)?,
        check_name(guest)?,
        check_name(channel)?
    );
    Ok(if force { with_force(&url) } else { url })
}

/// `url` saying the viewer behind it resets its Tight zlib streams when a
/// rectangle's reset bits say so (native viewers' zlib does): its screen
/// keeps Tight across a migration splice (docs/migration.md).
pub fn with_tight(url: &str) -> String {
    with_param(url, "tight=true")
}

/// `url` with `param` added to its query.
fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

/// `url` asking to take the console over from the session holding it.
pub fn with_force(url: &str) -> String {
    with_param(url, "force=true")
}

/// The console WebSocket a ticket URL stands for: a web console URL
/// (`https://…/console#ticket=…`) becomes the WebSocket of `channel`, or of
/// the ticket's first channel; a `wss://…` URL is already one.
pub fn ws_url_from(url: &str, channel: Option<&str>) -> Result<String, ClientError> {
    if url.starts_with("wss://") {
        return Ok(url.to_string());
    }
    let (base, fragment) = url
        .split_once("/console#")
        .ok_or(ClientError::NotATicketUrl(
            "expected https://…/console#ticket=… or wss://…/ws/…",
        ))?;
    let ticket = fragment
        .split('&')
        .find_map(|kv| kv.strip_prefix("ticket="))
        .ok_or(ClientError::NotATicketUrl("the URL has no ticket="))?;
    let claims = crate::peek(check_ticket(ticket)?)?;
    let channel = match channel {
        Some(c) => c,
        None => claims
            .channels
            .first()
            .ok_or(ClientError::NotATicketUrl("the ticket names no channel"))?,
    };
    ws_url(base, &claims.guest, channel, ticket)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ticket-shaped string with the given claims (unsigned: peeking does
    /// not verify).
    fn ticket(guest: &str, channels: &[&str]) -> String {
        use base64::Engine;
        let claims = vmgate_ticket::Claims::new(
            guest,
            channels.iter().copied(),
            vmgate_ticket::Mode::Interactive,
            0,
            60,
            None,
        );
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "vt1.{}.AAAAAAAAAAA.{}",
            b64.encode(serde_json::to_vec(&claims).unwrap()),
            b64.encode([0u8; 64])
        )
    }

    #[test]
    fn console_urls_are_built_from_the_gateway_base() {
        assert_eq!(
            ws_url("https://gw.example:8443/", "web1", "serial0", "vt1.a.b").unwrap(),
            "wss://gw.example:8443/ws/web1/serial0?ticket=vt1.a.b"
        );
        assert_eq!(
            web_url("https://gw.example", "vt1.a.b").unwrap(),
            "https://gw.example/console#ticket=vt1.a.b"
        );
        assert_eq!(
            admin_console_url("https://[::1]:9443", "web1", "serial0", true).unwrap(),
            "wss://[::1]:9443/v1/console/web1/serial0?force=true"
        );
        assert_eq!(
            with_tight("wss://gw/ws/a/vnc?ticket=t"),
            "wss://gw/ws/a/vnc?ticket=t&tight=true"
        );
        assert_eq!(
            with_force("wss://gw/ws/a/b?ticket=t"),
            "wss://gw/ws/a/b?ticket=t&force=true"
        );
    }

    #[test]
    fn bad_parts_are_refused_not_escaped() {
        assert!(matches!(
            ws_url("http://gw", "g", "c", "t"),
            Err(ClientError::Scheme(_))
        ));
        assert!(matches!(
            ws_url("https://gw/path", "g", "c", "t"),
            Err(ClientError::Url(_))
        ));
        assert!(matches!(
            ws_url("https://gw", "../x", "c", "t"),
            Err(ClientError::Name(_))
        ));
        assert!(matches!(
            ws_url("https://gw", "g", "c", "t&force=true"),
            Err(ClientError::NotATicketUrl(_))
        ));
    }

    #[test]
    fn a_ticket_url_becomes_its_websocket() {
        let t = ticket("web1", &["serial0", "vnc"]);
        let page = format!("https://gw:8443/console#ticket={t}");
        assert_eq!(
            ws_url_from(&page, None).unwrap(),
            format!("wss://gw:8443/ws/web1/serial0?ticket={t}")
        );
        assert_eq!(
            ws_url_from(&page, Some("vnc")).unwrap(),
            format!("wss://gw:8443/ws/web1/vnc?ticket={t}")
        );
        let ws = format!("wss://gw:8443/ws/web1/serial0?ticket={t}");
        assert_eq!(ws_url_from(&ws, Some("vnc")).unwrap(), ws);
        assert!(matches!(
            ws_url_from("https://gw/console#x=1", None),
            Err(ClientError::NotATicketUrl(_))
        ));
        assert!(matches!(
            ws_url_from("https://gw/console#ticket=vt1.e30.AAAAAAAAAAA.AAAA", None),
            Err(ClientError::Ticket(_))
        ));
    }
}
