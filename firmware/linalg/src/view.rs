//! Borrowed matrix views: a slice with a shape and strides (in elements), checked once
//! when the view is made, so that a kernel given a view reads and writes only inside
//! the slice it borrows.

/// Elements a strided `rows × cols` matrix spans (0 when empty).
pub(crate) fn span(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * row_stride + (cols - 1) * col_stride + 1
    }
}

/// A read-only `rows × cols` matrix: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatRef<'a> {
    /// The row-major `rows × cols` matrix at the start of `data`, rows `ld` apart.
    ///
    /// # Panics
    /// When `data` is shorter than the matrix spans.
    #[track_caller]
    pub fn new(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Self {
        Self::strided(data, rows, cols, (ld, 1))
    }

    /// The `rows × cols` matrix with element `(i, j)` at `data[i·rs + j·cs]`.
    ///
    /// # Panics
    /// When `data` is shorter than the matrix spans.
    #[track_caller]
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, (rs, cs): (usize, usize)) -> Self {
        assert!(
            span(rows, cols, rs, cs) <= data.len(),
            "a {rows}x{cols} matrix with strides ({rs}, {cs}) needs {} elements, the slice has {}",
            span(rows, cols, rs, cs),
            data.len()
        );
        MatRef {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// The transpose, the same elements with the strides swapped (no copy).
    pub fn t(self) -> Self {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// `(row stride, column stride)`.
    pub fn strides(&self) -> (usize, usize) {
        (self.rs, self.cs)
    }

    /// The borrowed elements (from the first one; the view spans at most all of them).
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Element `(i, j)`.
    pub fn at(&self, i: usize, j: usize) -> f32 {
        assert!(
            i < self.rows && j < self.cols,
            "({i}, {j}) is outside the view"
        );
        self.data[i * self.rs + j * self.cs]
    }

    /// Rows `lo..hi` and columns `c0..c1` as a view of the same storage.
    pub(crate) fn block(self, (lo, hi): (usize, usize), (c0, c1): (usize, usize)) -> Self {
        assert!(lo <= hi && hi <= self.rows && c0 <= c1 && c1 <= self.cols);
        let start = if lo == hi || c0 == c1 {
            0
        } else {
            lo * self.rs + c0 * self.cs
        };
        MatRef::strided(&self.data[start..], hi - lo, c1 - c0, (self.rs, self.cs))
    }
}

/// A writable row-major `rows × cols` matrix: element `(i, j)` is `data[i·ld + j]`, rows
/// not overlapping (`cols <= ld`, or a single row).
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    ld: usize,
}

impl<'a> MatMut<'a> {
    /// The row-major `rows × cols` matrix at the start of `data`, rows `ld` apart.
    ///
    /// # Panics
    /// When `data` is shorter than the matrix spans, or its rows would overlap.
    #[track_caller]
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, ld: usize) -> Self {
        assert!(
            span(rows, cols, ld, 1) <= data.len(),
            "a {rows}x{cols} matrix with row stride {ld} needs {} elements, the slice has {}",
            span(rows, cols, ld, 1),
            data.len()
        );
        assert!(
            cols <= ld || rows <= 1,
            "rows of {cols} elements {ld} apart overlap"
        );
        MatMut {
            data,
            rows,
            cols,
            ld,
        }
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The row stride.
    pub fn ld(&self) -> usize {
        self.ld
    }

    /// The borrowed elements.
    pub fn data(&mut self) -> &mut [f32] {
        self.data
    }

    /// A read-only view of the same elements.
    pub fn as_ref(&self) -> MatRef<'_> {
        MatRef::new(self.data, self.rows, self.cols, self.ld)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_reads_its_elements_and_its_transpose_swaps_them() {
        let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let m = MatRef::new(&data, 3, 2, 4); // rows 0..2, 4..6, 8..10
        assert_eq!(m.shape(), (3, 2));
        assert_eq!(m.at(2, 1), 9.0);
        assert_eq!(m.t().shape(), (2, 3));
        assert_eq!(m.t().at(1, 2), 9.0);
        let b = m.block((1, 3), (1, 2));
        assert_eq!((b.shape(), b.at(0, 0), b.at(1, 0)), ((2, 1), 5.0, 9.0));
    }

    #[test]
    #[should_panic(expected = "needs 10 elements, the slice has 9")]
    fn a_view_longer_than_its_slice_is_refused() {
        let data = [0.0f32; 9];
        let _ = MatRef::new(&data, 3, 2, 4);
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn a_writable_view_with_overlapping_rows_is_refused() {
        let mut data = [0.0f32; 16];
        let _ = MatMut::new(&mut data, 2, 5, 4);
    }
}
