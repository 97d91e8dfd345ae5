//! `math.eval`: a small recursive-descent parser over `f64`, never code evaluation.
//! Grammar: `expr := term (('+'|'-') term)*`, `term := unary (('*'|'/'|'%') unary)*`,
//! `unary := '-' unary | power`, `power := atom ('^' unary)?`,
//! `atom := number | const | func '(' expr (',' expr)* ')' | '(' expr ')'`.

const MAX_LEN: usize = 1_000;
const MAX_DEPTH: usize = 64;

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum MathError {
    #[error("expression is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("expression nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("unexpected {found} at position {pos}")]
    Unexpected { found: String, pos: usize },
    #[error("unknown name {0:?}")]
    UnknownName(String),
    #[error("{name} takes {want} argument(s), got {got}")]
    Arity {
        name: String,
        want: &'static str,
        got: usize,
    },
    #[error("result is not a finite number")]
    NotFinite,
}

pub fn eval(src: &str) -> Result<f64, MathError> {
    if src.len() > MAX_LEN {
        return Err(MathError::TooLong);
    }
    let mut p = Parser {
        src: src.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let v = p.expr()?;
    p.skip_ws();
    if p.pos < p.src.len() {
        return Err(p.unexpected());
    }
    if v.is_finite() {
        Ok(v)
    } else {
        Err(MathError::NotFinite)
    }
}

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.src.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.src.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn unexpected(&self) -> MathError {
        let found = match self.src.get(self.pos) {
            None => "end of input".to_owned(),
            Some(_) => {
                let rest = String::from_utf8_lossy(&self.src[self.pos..]);
                format!("{:?}", rest.chars().next().unwrap_or('?'))
            }
        };
        MathError::Unexpected {
            found,
            pos: self.pos,
        }
    }

    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, MathError>,
    ) -> Result<T, MathError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(MathError::TooDeep);
        }
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn expr(&mut self) -> Result<f64, MathError> {
        self.nested(|p| {
            let mut v = p.term()?;
            loop {
                if p.eat(b'+') {
                    v += p.term()?;
                } else if p.eat(b'-') {
                    v -= p.term()?;
                } else {
                    return Ok(v);
                }
            }
        })
    }

    fn term(&mut self) -> Result<f64, MathError> {
        let mut v = self.unary()?;
        loop {
            if self.eat(b'*') {
                v *= self.unary()?;
            } else if self.eat(b'/') {
                v /= self.unary()?;
            } else if self.eat(b'%') {
                v %= self.unary()?;
            } else {
                return Ok(v);
            }
        }
    }

    fn unary(&mut self) -> Result<f64, MathError> {
        self.nested(|p| {
            if p.eat(b'-') {
                Ok(-p.unary()?)
            } else if p.eat(b'+') {
                p.unary()
            } else {
                p.power()
            }
        })
    }

    fn power(&mut self) -> Result<f64, MathError> {
        let base = self.atom()?;
        if self.eat(b'^') {
            Ok(base.powf(self.unary()?))
        } else {
            Ok(base)
        }
    }

    fn atom(&mut self) -> Result<f64, MathError> {
        match self.peek() {
            Some(b'(') => {
                self.pos += 1;
                let v = self.expr()?;
                if !self.eat(b')') {
                    return Err(self.unexpected());
                }
                Ok(v)
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => self.number(),
            Some(c) if c.is_ascii_alphabetic() => self.name(),
            _ => Err(self.unexpected()),
        }
    }

    fn number(&mut self) -> Result<f64, MathError> {
        let start = self.pos;
        while self
            .src
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_digit() || *c == b'.')
        {
            self.pos += 1;
        }
        if matches!(self.src.get(self.pos), Some(b'e' | b'E')) {
            let save = self.pos;
            self.pos += 1;
            if matches!(self.src.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.src.get(self.pos).is_some_and(u8::is_ascii_digit) {
                while self.src.get(self.pos).is_some_and(u8::is_ascii_digit) {
                    self.pos += 1;
                }
            } else {
                self.pos = save;
            }
        }
        std::str::from_utf8(&self.src[start..self.pos])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(MathError::Unexpected {
                found: "malformed number".into(),
                pos: start,
            })
    }

    fn name(&mut self) -> Result<f64, MathError> {
        let start = self.pos;
        while self
            .src
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            self.pos += 1;
        }
        let name = String::from_utf8_lossy(&self.src[start..self.pos]).into_owned();
        if !self.eat(b'(') {
            return match name.as_str() {
                "pi" => Ok(std::f64::consts::PI),
                "e" => Ok(std::f64::consts::E),
                _ => Err(MathError::UnknownName(name)),
            };
        }
        let mut args = vec![self.expr()?];
        while self.eat(b',') {
            args.push(self.expr()?);
        }
        if !self.eat(b')') {
            return Err(self.unexpected());
        }
        call(&name, &args)
    }
}

fn call(name: &str, args: &[f64]) -> Result<f64, MathError> {
    let one = |f: fn(f64) -> f64| match args {
        [x] => Ok(f(*x)),
        _ => Err(MathError::Arity {
            name: name.to_owned(),
            want: "1",
            got: args.len(),
        }),
    };
    match name {
        "sqrt" => one(f64::sqrt),
        "abs" => one(f64::abs),
        "floor" => one(f64::floor),
        "ceil" => one(f64::ceil),
        "round" => one(f64::round),
        "ln" => one(f64::ln),
        "log10" => one(f64::log10),
        "sin" => one(f64::sin),
        "cos" => one(f64::cos),
        "tan" => one(f64::tan),
        "exp" => one(f64::exp),
        "min" | "max" if !args.is_empty() => {
            let f = if name == "min" { f64::min } else { f64::max };
            Ok(args.iter().copied().fold(args[0], f))
        }
        "min" | "max" => Err(MathError::Arity {
            name: name.to_owned(),
            want: "1 or more",
            got: 0,
        }),
        _ => Err(MathError::UnknownName(name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn evaluates_with_precedence_and_associativity() {
        let cases = [
            ("6*7", 42.0),
            ("1 + 2 * 3", 7.0),
            ("(1 + 2) * 3", 9.0),
            ("2^3^2", 512.0),
            ("-2^2", -4.0),
            ("10 - 4 - 3", 3.0),
            ("7 % 4", 3.0),
            ("sqrt(16) + max(1, 5, 3)", 9.0),
            ("1.5e3 / 3", 500.0),
            ("--3", 3.0),
        ];
        for (src, want) in cases {
            assert_eq!(eval(src), Ok(want), "{src}");
        }
        assert!((eval("pi").expect("pi") - std::f64::consts::PI).abs() < 1e-12);
    }

    #[test]
    fn rejects_what_is_not_arithmetic() {
        assert!(matches!(eval(""), Err(MathError::Unexpected { .. })));
        assert!(matches!(eval("1 +"), Err(MathError::Unexpected { .. })));
        assert!(matches!(eval("(1"), Err(MathError::Unexpected { .. })));
        assert!(matches!(eval("system(1)"), Err(MathError::UnknownName(_))));
        assert!(matches!(eval("x"), Err(MathError::UnknownName(_))));
        assert_eq!(eval("1/0"), Err(MathError::NotFinite));
        assert_eq!(eval(&"(".repeat(500)), Err(MathError::TooDeep));
        assert_eq!(eval(&"1+".repeat(600)), Err(MathError::TooLong));
        assert!(matches!(eval("sqrt(1, 2)"), Err(MathError::Arity { .. })));
    }

    proptest! {
        #[test]
        fn never_panics(s in "[0-9a-z+*/%^(),. -]{0,64}") {
            let _ = eval(&s);
        }
    }
}
