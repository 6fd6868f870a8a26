//! Single values: quantities, soft limits and overcommit factors, each
//! validated with the field it belongs to.

use fairshare_proto::units::{Bytes, Quantity, ValueError};

use super::Builder;
use crate::error::Origin;
use crate::policy::MemHigh;
use crate::raw::Scalar;

impl Builder {
    pub(super) fn quantity<T: Quantity>(
        &mut self,
        o: Origin,
        field: &str,
        v: &Scalar,
    ) -> Option<T> {
        let parsed = match v {
            Scalar::UInt(n) => T::from_u64(*n),
            Scalar::Int(n) => Err(ValueError::NotPositive(n.to_string())),
            Scalar::Float(f) => T::from_number(*f),
            Scalar::Str(s) => s.parse(),
            Scalar::Bool(b) => Err(ValueError::NotANumber {
                input: b.to_string(),
                expected: T::EXPECTED,
            }),
        };
        parsed.map_err(|e| self.err(o, field, e.to_string())).ok()
    }

    pub(super) fn mem_high(&mut self, o: Origin, field: &str, v: &Scalar) -> Option<MemHigh> {
        if let Scalar::Str(s) = v
            && let Some(p) = s.trim().strip_suffix('%')
        {
            return match p.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p < 100.0 => Some(MemHigh::Percent(p)),
                _ => {
                    self.err(
                        o,
                        field,
                        format!(
                            "`{s}` must be a percentage above 0% and below 100% of mem, e.g. 90%"
                        ),
                    );
                    None
                }
            };
        }
        self.quantity::<Bytes>(o, field, v).map(MemHigh::Size)
    }

    pub(super) fn factor(&mut self, o: Origin, field: &str, v: &Scalar) -> Option<f64> {
        let f = match v {
            Scalar::UInt(n) => Some(*n as f64),
            Scalar::Float(f) => Some(*f),
            Scalar::Str(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match f {
            Some(f) if f.is_finite() && f > 0.0 && f <= 1000.0 => Some(f),
            _ => {
                self.err(
                    o,
                    field,
                    format!(
                        "`{}` is not an overcommit factor; expected a number above 0 such as 1.5 (or {{cpu: 4, mem: 1.5}})",
                        v.shown()
                    ),
                );
                None
            }
        }
    }
}
