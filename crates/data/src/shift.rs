//! Shifted test images, as in the paper's shift experiment.
//!
//! A line (a column for shifts along `x`, a row along `y`) is *empty* when
//! all its pixels, in every channel, are exactly 0. An image qualifies for a
//! shift range of `min_shift` when it has at least `min_shift` empty lines on
//! both sides and its label is selected. Shifting by `s` rolls the image by
//! `s` pixels along the axis (positive: right or down); on a qualifying image
//! only empty lines wrap around, so the roll is a pure translation.

use std::fmt;
use std::str::FromStr;

use crate::error::{DataError, Result};
use crate::images::ImageSet;

/// The axis of a shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Axis {
    /// Horizontal: columns move.
    #[serde(rename = "x")]
    X,
    /// Vertical: rows move.
    #[serde(rename = "y")]
    Y,
}

impl fmt::Display for Axis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Axis::X => "x",
            Axis::Y => "y",
        })
    }
}

impl FromStr for Axis {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "x" | "X" => Ok(Axis::X),
            "y" | "Y" => Ok(Axis::Y),
            _ => Err(DataError::Shift(format!(
                "unknown axis '{s}': choose x or y"
            ))),
        }
    }
}

/// Which labels a shift test keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Labels {
    /// Every label.
    All,
    /// These labels.
    Only(Vec<u8>),
}

impl Labels {
    /// Whether `label` is selected.
    pub fn contains(&self, label: u8) -> bool {
        match self {
            Labels::All => true,
            Labels::Only(l) => l.contains(&label),
        }
    }

    /// Parses the command-line form: `all`, or class numbers 0..9.
    pub fn parse(words: &[String]) -> Result<Self> {
        if words.len() == 1 && words[0].eq_ignore_ascii_case("all") {
            return Ok(Labels::All);
        }
        if words.is_empty() {
            return Err(DataError::Shift(
                "no label given: give class numbers 0..9 or 'all'".into(),
            ));
        }
        words
            .iter()
            .map(|w| match w.parse::<u8>() {
                Ok(v) if v <= 9 => Ok(v),
                _ => Err(DataError::Shift(format!(
                    "bad label '{w}': give class numbers 0..9 or 'all'"
                ))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Labels::Only)
    }
}

impl fmt::Display for Labels {
    /// `all`, or the labels joined by spaces (the CSV's `labels` column).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Labels::All => f.write_str("all"),
            Labels::Only(l) => f.write_str(
                &l.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        }
    }
}

/// Empty lines before and after the content of one `(C, H, W)` image along
/// `axis`: `(leading, trailing)`. An all-zero image counts its whole side on
/// both.
pub fn empty_margins(image: &[u8], shape: (usize, usize, usize), axis: Axis) -> (usize, usize) {
    let (c, h, w) = shape;
    let lines = match axis {
        Axis::X => w,
        Axis::Y => h,
    };
    let empty = |line: usize| -> bool {
        (0..c).all(|ch| {
            let plane = &image[ch * h * w..(ch + 1) * h * w];
            match axis {
                Axis::X => (0..h).all(|y| plane[y * w + line] == 0),
                Axis::Y => plane[line * w..(line + 1) * w].iter().all(|&v| v == 0),
            }
        })
    };
    let lead = (0..lines).take_while(|&l| empty(l)).count();
    let trail = (0..lines).rev().take_while(|&l| empty(l)).count();
    (lead, trail)
}

/// Positions in `set` of the images that qualify for shifts of up to
/// `min_shift` along `axis` with a label in `labels`, in file order.
///
/// Errors (one line each): `2 * min_shift` larger than the side, or no image
/// qualifying.
pub fn select_shiftable(
    set: &ImageSet,
    labels: &Labels,
    min_shift: usize,
    axis: Axis,
) -> Result<Vec<usize>> {
    let (_, h, w) = set.shape();
    let side = match axis {
        Axis::X => w,
        Axis::Y => h,
    };
    if 2 * min_shift > side {
        return Err(DataError::Shift(format!(
            "--min-shift {min_shift} is too large for images {side} pixels wide along {axis}: at most {}",
            side / 2
        )));
    }
    let picked: Vec<usize> = (0..set.len())
        .filter(|&i| labels.contains(set.label(i)))
        .filter(|&i| {
            let (a, b) = empty_margins(set.image(i), set.shape(), axis);
            a >= min_shift && b >= min_shift
        })
        .collect();
    if picked.is_empty() {
        return Err(DataError::Shift(format!(
            "no {} test image with label {labels} has {min_shift} empty lines on both sides along {axis}: lower --min-shift",
            set.dataset()
        )));
    }
    Ok(picked)
}

/// Rolls one `(C, H, W)` image by `shift` pixels along `axis` in place
/// (positive: right or down), as `torch.roll` does.
pub fn roll_image(image: &mut [u8], shape: (usize, usize, usize), axis: Axis, shift: i64) {
    let (c, h, w) = shape;
    for plane in image.chunks_exact_mut(h * w).take(c) {
        match axis {
            Axis::X => {
                let s = shift.rem_euclid(w as i64) as usize;
                for row in plane.chunks_exact_mut(w) {
                    row.rotate_right(s);
                }
            }
            Axis::Y => {
                let s = shift.rem_euclid(h as i64) as usize;
                plane.rotate_right(s * w);
            }
        }
    }
}

/// A copy of `set` with every image rolled by `shift` along `axis`.
pub fn shifted(set: &ImageSet, axis: Axis, shift: i64) -> ImageSet {
    let shape = set.shape();
    set.map_images(|img| roll_image(img, shape, axis, shift))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::DatasetName;

    fn set_of(images: Vec<Vec<u8>>, labels: Vec<u8>, h: usize, w: usize) -> ImageSet {
        ImageSet::new(DatasetName::Mnist, 1, h, w, images.concat(), labels)
    }

    #[test]
    fn margins_along_both_axes() {
        // 3x5 image with content in column 1 and row 2.
        let img = vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0];
        assert_eq!(empty_margins(&img, (1, 3, 5), Axis::X), (1, 3));
        assert_eq!(empty_margins(&img, (1, 3, 5), Axis::Y), (2, 0));
        assert_eq!(empty_margins(&[0; 15], (1, 3, 5), Axis::X), (5, 5));
    }

    #[test]
    fn roll_is_torch_roll() {
        let mut img: Vec<u8> = (0..6).collect(); // 2x3
        roll_image(&mut img, (1, 2, 3), Axis::X, 1);
        assert_eq!(img, vec![2, 0, 1, 5, 3, 4]);
        roll_image(&mut img, (1, 2, 3), Axis::X, -1);
        roll_image(&mut img, (1, 2, 3), Axis::Y, 1);
        assert_eq!(img, vec![3, 4, 5, 0, 1, 2]);
        roll_image(&mut img, (1, 2, 3), Axis::Y, -3);
        assert_eq!(img, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn selection_by_label_and_margin() {
        let mut a = vec![0u8; 36]; // 6x6, content in column 3 only
        a[6 + 3] = 1;
        let mut b = vec![0u8; 36]; // content in column 0
        b[0] = 1;
        let set = set_of(vec![a.clone(), b, a], vec![1, 1, 2], 6, 6);
        let one = Labels::Only(vec![1]);
        assert_eq!(select_shiftable(&set, &one, 2, Axis::X).unwrap(), vec![0]);
        assert_eq!(
            select_shiftable(&set, &Labels::All, 2, Axis::X).unwrap(),
            vec![0, 2]
        );
        assert_eq!(
            select_shiftable(&set, &Labels::All, 0, Axis::X).unwrap(),
            vec![0, 1, 2]
        );
        let e = select_shiftable(&set, &one, 3, Axis::X)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no MNIST test image with label 1"), "{e}");
        let e = select_shiftable(&set, &one, 4, Axis::X)
            .unwrap_err()
            .to_string();
        assert!(e.contains("too large") && e.contains("at most 3"), "{e}");
    }

    #[test]
    fn shifting_a_qualifying_image_only_moves_zeros_across() {
        let mut a = vec![0u8; 36];
        a[6 * 2 + 2] = 5;
        a[6 * 3 + 3] = 6;
        let set = set_of(vec![a.clone()], vec![1], 6, 6);
        let s = shifted(&set, Axis::X, 2);
        let nonzero: usize = s.image(0).iter().filter(|&&v| v != 0).count();
        assert_eq!(nonzero, 2);
        assert_eq!(s.image(0)[6 * 2 + 4], 5);
        assert_eq!(shifted(&s, Axis::X, -2).image(0), &a[..]);
    }

    #[test]
    fn labels_parse() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(Labels::parse(&w(&["all"])).unwrap(), Labels::All);
        assert_eq!(
            Labels::parse(&w(&["1", "7"])).unwrap(),
            Labels::Only(vec![1, 7])
        );
        assert_eq!(Labels::Only(vec![1, 7]).to_string(), "1 7");
        assert!(
            Labels::parse(&w(&["one"]))
                .unwrap_err()
                .to_string()
                .contains("bad label 'one'")
        );
        assert!(Labels::parse(&w(&["10"])).is_err());
        assert!(Labels::parse(&[]).is_err());
    }
}
