//! SMTP command parsing (RFC 5321 §4.1, RFC 1870, 6152, 6531, 3030, 4954, 3461).
//!
//! One command line in (CRLF already stripped), a [`Command`] out that borrows from the
//! line. Pure and allocation-free; every malformed input is a [`ParseError`] whose
//! `reply` is the exact SMTP reply to send. Never panics on any input (fuzzed in
//! `tests/smtp_parser_props.rs`).

use super::notify::{self, Notify, Ret};

/// A reverse-path or forward-path mailbox, borrowed from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mailbox<'a> {
    pub local: &'a str,
    pub domain: &'a str,
}

impl Mailbox<'_> {
    /// `local@domain` with the domain lowercased (local parts are case-sensitive per
    /// RFC 5321 §2.4, though our directory folds them).
    pub fn to_address(&self) -> String {
        format!("{}@{}", self.local, self.domain.to_ascii_lowercase())
    }

    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }
}

/// `BODY=` parameter of MAIL FROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
}

/// Parameters of MAIL FROM that we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MailParams<'a> {
    pub size: Option<u64>,
    pub body: Option<Body>,
    pub smtputf8: bool,
    /// `RET=` (RFC 3461 §4.3).
    pub ret: Option<Ret>,
    /// `ENVID=`, still xtext (checked: it decodes and fits the bound).
    pub envid: Option<&'a str>,
    /// `REQUIRETLS` (RFC 8689): relay only over verified TLS.
    pub requiretls: bool,
}

/// Parameters of RCPT TO that we implement (RFC 3461 §4.1, §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RcptParams<'a> {
    pub notify: Option<Notify>,
    /// `ORCPT=`, still `type;xtext` (checked).
    pub orcpt: Option<&'a str>,
}

/// One parsed command. Arguments borrow from the input line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    Ehlo(&'a str),
    Helo(&'a str),
    /// LMTP's greeting (RFC 2033 §4.1); only the LMTP port takes it.
    Lhlo(&'a str),
    /// `None` is the null reverse-path `<>`.
    Mail(Option<Mailbox<'a>>, MailParams<'a>),
    Rcpt(Mailbox<'a>, RcptParams<'a>),
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth {
        mechanism: &'a str,
        initial: Option<&'a str>,
    },
}

/// A command that cannot be executed, with the reply that says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError {
    /// The complete reply line, without CRLF.
    pub reply: &'static str,
    /// True when the verb itself is unknown (counts toward `bad_commands_max`).
    pub unknown_verb: bool,
}

const fn syntax(reply: &'static str) -> ParseError {
    ParseError {
        reply,
        unknown_verb: false,
    }
}

const UNKNOWN: ParseError = ParseError {
    reply: "500 5.5.1 Command unrecognized",
    unknown_verb: true,
};
const BAD_ARGS: ParseError = syntax("501 5.5.4 Syntax error in parameters or arguments");
const NO_ARGS: ParseError = syntax("501 5.5.4 This command takes no arguments");
const BAD_PATH: ParseError = syntax("501 5.1.3 Bad address syntax");
const BAD_SENDER: ParseError = syntax("501 5.1.7 Bad sender address syntax");
const NOT_UTF8: ParseError = syntax("500 5.6.7 Command is not valid UTF-8");
const BAD_PARAM: ParseError = syntax("555 5.5.4 Unsupported MAIL/RCPT parameter");
const BAD_RET: ParseError = syntax("501 5.5.4 RET must be FULL or HDRS, once");
const BAD_ENVID: ParseError =
    syntax("501 5.5.4 ENVID must be xtext of at most 100 characters, once");
const BAD_NOTIFY: ParseError =
    syntax("501 5.5.4 NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY, once");
const BAD_ORCPT: ParseError =
    syntax("501 5.5.4 ORCPT must be addr-type;xtext of at most 500 characters, once");

/// Parses one command line (without the trailing CRLF).
pub fn parse(line: &[u8]) -> Result<Command<'_>, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| NOT_UTF8)?;
    let line = line.trim_end_matches([' ', '\t']);
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim_start_matches(' ')),
        None => (line, ""),
    };
    if verb.len() > 8 {
        return Err(UNKNOWN);
    }
    let mut upper = [0u8; 8];
    for (dst, src) in upper.iter_mut().zip(verb.bytes()) {
        *dst = src.to_ascii_uppercase();
    }
    let verb_upper = upper.get(..verb.len()).unwrap_or(&[]);
    let no_args = |c: Command<'static>| if rest.is_empty() { Ok(c) } else { Err(NO_ARGS) };
    match verb_upper {
        b"EHLO" => domain_arg(rest).map(Command::Ehlo),
        b"HELO" => domain_arg(rest).map(Command::Helo),
        b"LHLO" => domain_arg(rest).map(Command::Lhlo),
        b"MAIL" => parse_mail(rest),
        b"RCPT" => parse_rcpt(rest),
        b"DATA" => no_args(Command::Data),
        b"BDAT" => parse_bdat(rest),
        b"RSET" => no_args(Command::Rset),
        b"NOOP" => Ok(Command::Noop), // RFC 5321 §4.1.1.9: a parameter is ignored
        b"QUIT" => no_args(Command::Quit),
        b"VRFY" => Ok(Command::Vrfy),
        b"EXPN" => Ok(Command::Expn),
        b"HELP" => Ok(Command::Help),
        b"STARTTLS" => no_args(Command::StartTls),
        b"AUTH" => parse_auth(rest),
        _ => Err(UNKNOWN),
    }
}

fn domain_arg(rest: &str) -> Result<&str, ParseError> {
    // EHLO takes one domain or address literal; anything after a space is ignored by
    // most servers, and we accept it the same way.
    let domain = rest.split(' ').next().unwrap_or("");
    if domain.is_empty() {
        return Err(syntax("501 5.5.4 Syntax: EHLO hostname"));
    }
    // The argument ends up in our Received: header: only a real domain or address
    // literal may go there (no controls, no Unicode line separators, no comments).
    if !valid_helo(domain) {
        return Err(syntax(
            "501 5.5.4 Invalid EHLO/HELO argument: expected a domain name or address literal",
        ));
    }
    Ok(domain)
}

/// A character that may appear in a domain label beyond ASCII letters, digits and `-`:
/// a Unicode letter or digit (an RFC 6531 U-label), never a control or separator.
fn label_char(c: char, underscore: bool) -> bool {
    c.is_ascii_alphanumeric()
        || c == '-'
        || (underscore && c == '_')
        || (!c.is_ascii() && c.is_alphanumeric())
}

/// RFC 5321 `Domain` (labels of letters, digits and inner hyphens, ≤ 63 bytes each,
/// ≤ 255 in all), with U-labels allowed (RFC 6531). `underscore` admits `_`, which
/// real clients put in host names (HELO only).
pub fn valid_domain(domain: &str, underscore: bool) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| label_char(c, underscore))
    };
    !domain.is_empty() && domain.len() <= 255 && domain.split('.').all(label_ok)
}

/// RFC 5321 address literal: `[IPv4]`, `[IPv6:…]` (or a general literal `[tag:text]`
/// of printable ASCII).
pub fn valid_address_literal(literal: &str) -> bool {
    let Some(inner) = literal.strip_prefix('[').and_then(|l| l.strip_suffix(']')) else {
        return false;
    };
    if let Some(v6) = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
    {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    if inner.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    // General-address-literal = Standardized-tag ":" 1*dcontent
    match inner.split_once(':') {
        Some((tag, text)) => {
            valid_domain(tag, false)
                && !text.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !matches!(b, b'[' | b']' | b'\\'))
        }
        None => false,
    }
}

/// What EHLO/HELO accept: a domain (underscores tolerated) or an address literal.
fn valid_helo(arg: &str) -> bool {
    if arg.starts_with('[') {
        valid_address_literal(arg)
    } else {
        valid_domain(arg.strip_suffix('.').unwrap_or(arg), true)
    }
}

/// Strips a case-insensitive `prefix` such as `FROM:`.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Splits `<path> params…` (tolerating one space after the colon, as most servers do).
fn split_path(rest: &str) -> Option<(&str, &str)> {
    let rest = rest.trim_start_matches(' ');
    let inner = rest.strip_prefix('<')?;
    // A quoted local part may contain '>', so find the closing '>' outside quotes.
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '>' if !in_quotes => return Some((&inner[..i], &inner[i + 1..])),
            _ => {}
        }
    }
    None
}

/// Validates `local@domain` (a source route `@a,@b:` prefix is dropped, RFC 5321 §4.1.2).
fn parse_mailbox(path: &str) -> Option<Mailbox<'_>> {
    let path = match path.strip_prefix('@') {
        Some(route) => &route[route.find(':')? + 1..],
        None => path,
    };
    let at = path.rfind('@')?;
    let (local, domain) = (&path[..at], &path[at + 1..]);
    if local.is_empty() || local.len() > 64 || domain.is_empty() || domain.len() > 255 {
        return None;
    }
    if local.starts_with('"') {
        if local.len() < 2 || !local.ends_with('"') {
            return None;
        }
        if local
            .chars()
            .any(|c| c.is_control() || (c.is_whitespace() && c != ' '))
        {
            return None;
        }
    } else {
        // RFC 6531 allows UTF-8 in local parts; never controls or separators (U+0085,
        // U+2028 would break the header lines the address is copied into).
        let atext = |c: char| {
            c.is_ascii_alphanumeric()
                || "!#$%&'*+-/=?^_`{|}~".contains(c)
                || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
        };
        if local
            .split('.')
            .any(|atom| atom.is_empty() || !atom.chars().all(atext))
        {
            return None;
        }
    }
    let domain_ok = if domain.starts_with('[') {
        valid_address_literal(domain)
    } else {
        valid_domain(domain, false)
    };
    if !domain_ok {
        return None;
    }
    Some(Mailbox { local, domain })
}

/// `KEY[=VALUE]` pairs of MAIL or RCPT (RFC 5321 §4.1.2 esmtp-param), in order.
fn esmtp_params(params: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    params
        .split(' ')
        .filter(|p| !p.is_empty())
        .map(|param| match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        })
}

fn parse_mail(rest: &str) -> Result<Command<'_>, ParseError> {
    let rest = strip_prefix_ci(rest, "FROM:").ok_or(BAD_ARGS)?;
    let (path, params) = split_path(rest).ok_or(BAD_SENDER)?;
    let sender = if path.is_empty() {
        None
    } else {
        Some(parse_mailbox(path).ok_or(BAD_SENDER)?)
    };
    let mut out = MailParams::default();
    for (key, value) in esmtp_params(params) {
        if key.eq_ignore_ascii_case("SIZE") {
            let v = value.ok_or(BAD_ARGS)?;
            if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BAD_ARGS);
            }
            out.size = Some(v.parse().map_err(|_| BAD_ARGS)?);
        } else if key.eq_ignore_ascii_case("BODY") {
            let v = value.ok_or(BAD_ARGS)?;
            out.body = Some(if v.eq_ignore_ascii_case("7BIT") {
                Body::SevenBit
            } else if v.eq_ignore_ascii_case("8BITMIME") {
                Body::EightBitMime
            } else {
                return Err(syntax("501 5.5.4 BODY must be 7BIT or 8BITMIME"));
            });
        } else if key.eq_ignore_ascii_case("SMTPUTF8") && value.is_none() {
            out.smtputf8 = true;
        } else if key.eq_ignore_ascii_case("AUTH") && value.is_some() {
            // RFC 4954 §5: accepted and ignored (we do not relay the identity onward).
        } else if key.eq_ignore_ascii_case("REQUIRETLS") && value.is_none() {
            out.requiretls = true;
        } else if key.eq_ignore_ascii_case("RET") {
            let ret = value.and_then(Ret::parse).ok_or(BAD_RET)?;
            if out.ret.replace(ret).is_some() {
                return Err(BAD_RET);
            }
        } else if key.eq_ignore_ascii_case("ENVID") {
            let envid = value.filter(|v| notify::parse_envid(v).is_some());
            if out.envid.replace(envid.ok_or(BAD_ENVID)?).is_some() {
                return Err(BAD_ENVID);
            }
        } else {
            return Err(BAD_PARAM);
        }
    }
    Ok(Command::Mail(sender, out))
}

fn parse_rcpt(rest: &str) -> Result<Command<'_>, ParseError> {
    let rest = strip_prefix_ci(rest, "TO:").ok_or(BAD_ARGS)?;
    let (path, params) = split_path(rest).ok_or(BAD_PATH)?;
    let mut out = RcptParams::default();
    for (key, value) in esmtp_params(params) {
        if key.eq_ignore_ascii_case("NOTIFY") {
            let notify = value.and_then(Notify::parse).ok_or(BAD_NOTIFY)?;
            if out.notify.replace(notify).is_some() {
                return Err(BAD_NOTIFY);
            }
        } else if key.eq_ignore_ascii_case("ORCPT") {
            let orcpt = value.filter(|v| notify::parse_orcpt(v).is_some());
            if out.orcpt.replace(orcpt.ok_or(BAD_ORCPT)?).is_some() {
                return Err(BAD_ORCPT);
            }
        } else {
            return Err(BAD_PARAM);
        }
    }
    // RFC 5321 §4.1.1.3: <postmaster> without a domain must be accepted.
    if path.eq_ignore_ascii_case("postmaster") {
        let mailbox = Mailbox {
            local: path,
            domain: "",
        };
        return Ok(Command::Rcpt(mailbox, out));
    }
    let mailbox = parse_mailbox(path).ok_or(BAD_PATH)?;
    Ok(Command::Rcpt(mailbox, out))
}

fn parse_bdat(rest: &str) -> Result<Command<'_>, ParseError> {
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let size = words.next().ok_or(BAD_ARGS)?;
    if size.len() > 20 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BAD_ARGS);
    }
    let size = size.parse().map_err(|_| BAD_ARGS)?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(BAD_ARGS),
    };
    if words.next().is_some() {
        return Err(BAD_ARGS);
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(rest: &str) -> Result<Command<'_>, ParseError> {
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let mechanism = words.next().ok_or(BAD_ARGS)?;
    let initial = words.next();
    if words.next().is_some() {
        return Err(BAD_ARGS);
    }
    Ok(Command::Auth { mechanism, initial })
}

#[cfg(test)]
#[allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            parse(b"ehlo client.example"),
            Ok(Command::Ehlo("client.example"))
        );
        assert_eq!(parse(b"QuIt"), Ok(Command::Quit));
        assert_eq!(parse(b"noop whatever"), Ok(Command::Noop));
        assert!(parse(b"XYZZY").unwrap_err().unknown_verb);
        assert!(parse(b"").unwrap_err().unknown_verb);
    }

    #[test]
    fn mail_from_paths_and_params() {
        let Ok(Command::Mail(Some(m), p)) =
            parse(b"MAIL FROM:<a.b@Example.COM> SIZE=1000 BODY=8BITMIME SMTPUTF8")
        else {
            panic!("parse failed")
        };
        assert_eq!((m.local, m.domain), ("a.b", "Example.COM"));
        assert_eq!(m.to_address(), "a.b@example.com");
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, Some(Body::EightBitMime));
        assert!(p.smtputf8);
        assert_eq!(
            parse(b"MAIL FROM:<>"),
            Ok(Command::Mail(None, MailParams::default()))
        );
        assert!(matches!(
            parse(b"mail from: <x@y.z>"),
            Ok(Command::Mail(Some(_), _))
        ));
        assert_eq!(parse(b"MAIL FROM:<x@y.z> X-FOO=1"), Err(BAD_PARAM));
        let Ok(Command::Mail(_, p)) = parse(b"MAIL FROM:<x@y.z> RET=hdrs ENVID=QQ+2B1") else {
            panic!("DSN parameters refused")
        };
        assert_eq!((p.ret, p.envid), (Some(Ret::Hdrs), Some("QQ+2B1")));
        assert_eq!(parse(b"MAIL FROM:<x@y.z> RET=ALL"), Err(BAD_RET));
        assert_eq!(parse(b"MAIL FROM:<x@y.z> RET=FULL RET=HDRS"), Err(BAD_RET));
        assert_eq!(parse(b"MAIL FROM:<x@y.z> ENVID=a=b"), Err(BAD_ENVID));
        let Ok(Command::Rcpt(_, r)) =
            parse(b"RCPT TO:<a@b.c> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b.c")
        else {
            panic!("DSN parameters refused")
        };
        assert_eq!(r.orcpt, Some("rfc822;a+40b.c"));
        assert!(r.notify.is_some_and(|n| n.success && n.failure && !n.delay));
        assert_eq!(
            parse(b"RCPT TO:<a@b.c> NOTIFY=NEVER,DELAY"),
            Err(BAD_NOTIFY)
        );
        assert_eq!(parse(b"RCPT TO:<a@b.c> ORCPT=a+4"), Err(BAD_ORCPT));
        assert_eq!(parse(b"RCPT TO:<a@b.c> FOO"), Err(BAD_PARAM));
        assert_eq!(parse(b"MAIL FROM:x@y.z"), Err(BAD_SENDER));
        assert_eq!(parse(b"MAIL FROM:<x@@y>"), Err(BAD_SENDER));
        assert_eq!(parse(b"MAIL FROM:<x@y.z> SIZE=abc"), Err(BAD_ARGS));
    }

    #[test]
    fn rcpt_to_forms() {
        let Ok(Command::Rcpt(m, _)) = parse(b"RCPT TO:<@relay.example:\"odd>name\"@d.example>")
        else {
            panic!("parse failed")
        };
        assert_eq!((m.local, m.domain), ("\"odd>name\"", "d.example"));
        assert!(matches!(
            parse(b"RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt(..))
        ));
        assert!(matches!(
            parse(b"RCPT TO:<u@[127.0.0.1]>"),
            Ok(Command::Rcpt(..))
        ));
        assert_eq!(parse(b"RCPT TO:<u@-bad.example>"), Err(BAD_PATH));
        assert_eq!(parse(b"RCPT TO:<>"), Err(BAD_PATH));
        assert_eq!(parse(b"RCPT TO:<a@b.c> X-NOTIFY=NEVER"), Err(BAD_PARAM));
    }

    #[test]
    fn helo_takes_a_domain_or_address_literal() {
        for ok in [
            "client.example",
            "mail_gw.example",
            "localhost",
            "[127.0.0.1]",
            "[IPv6:::1]",
            "bücher.example",
            "host.example.",
        ] {
            assert!(parse(format!("EHLO {ok}").as_bytes()).is_ok(), "{ok}");
        }
        for bad in [
            "a\u{85}b.example",
            "a\u{2028}b",
            ")(",
            "x(comment)",
            "-lead.example",
            "a..b",
            "[999.1.1.1]",
            "[IPv6:zz]",
            "[1.2.3.4",
            "a;b",
        ] {
            let reply = parse(format!("EHLO {bad}").as_bytes()).unwrap_err().reply;
            assert!(reply.starts_with("501 5.5.4"), "{bad}: {reply}");
            assert!(parse(format!("HELO {bad}").as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_refuse_line_separators() {
        assert_eq!(
            parse("RCPT TO:<a\u{2028}b@x.example>".as_bytes()),
            Err(BAD_PATH)
        );
        assert_eq!(
            parse("RCPT TO:<ab@x\u{85}.example>".as_bytes()),
            Err(BAD_PATH)
        );
        assert_eq!(
            parse("RCPT TO:<\"a\u{2028}\"@x.example>".as_bytes()),
            Err(BAD_PATH)
        );
        assert!(parse("RCPT TO:<jörg@bücher.example>".as_bytes()).is_ok());
    }

    #[test]
    fn bdat_and_auth() {
        assert_eq!(
            parse(b"BDAT 100 LAST"),
            Ok(Command::Bdat {
                size: 100,
                last: true
            })
        );
        assert_eq!(
            parse(b"BDAT 0"),
            Ok(Command::Bdat {
                size: 0,
                last: false
            })
        );
        assert_eq!(parse(b"BDAT 99999999999999999999999"), Err(BAD_ARGS));
        assert_eq!(parse(b"BDAT 1 FIRST"), Err(BAD_ARGS));
        assert_eq!(
            parse(b"AUTH PLAIN AGEAYg=="),
            Ok(Command::Auth {
                mechanism: "PLAIN",
                initial: Some("AGEAYg==")
            })
        );
        assert_eq!(parse(b"DATA now"), Err(NO_ARGS));
        assert_eq!(parse(b"MAIL FROM:<\xff@x.y>"), Err(NOT_UTF8));
    }
}
