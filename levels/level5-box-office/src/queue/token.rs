//! Queue tokens: what a client carries from the waiting room to the seats.
//!
//! A token reads `<show>.<number>.<secret>`: the show and the arrival number
//! say *where* to look (they are not secret, the client is told its number
//! anyway), and the secret, 128 random bits drawn by the server and stored
//! in Redis with the entry, proves the token was issued. Nobody can forge
//! one without guessing 128 bits.
//!
//! The secret is compared in constant time ([`subtle`]): a plain `==` stops
//! at the first differing byte, and how long it took would tell an attacker,
//! byte by byte, how much of their guess was right. The entry also names
//! its user and its show, so another user's token, or one for another show,
//! is refused even though its secret is real.

use subtle::ConstantTimeEq as _;

/// The secret's length in hex digits (128 bits).
const SECRET_HEX: usize = 32;

/// A token as the client sent it, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The show it is for.
    pub show_id: i64,
    /// The holder's arrival number.
    pub number: i64,
    /// The 32 hex digits that prove it was issued.
    pub secret: String,
}

impl Token {
    /// Parses `<show>.<number>.<secret>`; `None` if it is not shaped like a
    /// token (which is then `token_invalid`, like a wrong secret).
    pub fn parse(raw: &str) -> Option<Self> {
        let mut parts = raw.split('.');
        let show_id = parts.next()?.parse::<i64>().ok().filter(|v| *v > 0)?;
        let number = parts.next()?.parse::<i64>().ok().filter(|v| *v > 0)?;
        let secret = parts.next()?;
        let well_formed = secret.len() == SECRET_HEX
            && secret
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if !well_formed || parts.next().is_some() {
            return None;
        }
        Some(Self {
            show_id,
            number,
            secret: secret.to_owned(),
        })
    }

    /// The token as the client carries it.
    pub fn render(show_id: i64, number: i64, secret: &str) -> String {
        format!("{show_id}.{number}.{secret}")
    }

    /// Whether `stored` (the secret Redis keeps) is this token's secret,
    /// compared in constant time.
    pub fn proves(&self, stored: &str) -> bool {
        self.secret.as_bytes().ct_eq(stored.as_bytes()).into()
    }
}

/// A fresh secret: 128 bits from the operating system's generator, as hex.
pub fn new_secret() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_only_its_own_secret_proves_it() {
        let secret = new_secret();
        assert_eq!(secret.len(), 32);
        let token = Token::parse(&Token::render(7, 42, &secret)).unwrap();
        assert_eq!((token.show_id, token.number), (7, 42));
        assert!(token.proves(&secret));
        assert!(!token.proves(&new_secret()));
        assert!(!token.proves(&secret[..31]));
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        let secret = "0123456789abcdef0123456789abcdef";
        for bad in [
            String::new(),
            "7.42".to_owned(),
            format!("7.42.{secret}.x"),
            format!("0.42.{secret}"),
            format!("7.-1.{secret}"),
            format!("x.42.{secret}"),
            format!("7.42.{}", &secret[1..]),
            format!("7.42.{}", secret.to_uppercase()),
            "7.42.zz23456789abcdef0123456789abcdef".to_owned(),
        ] {
            assert_eq!(Token::parse(&bad), None, "{bad}");
        }
    }
}
