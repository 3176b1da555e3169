r"""Small helpers every layer may use: atomic file writes and digests (:mod:`.files`),
package-shipped assets (:mod:`.assets`), names (:mod:`.naming`), modules (:mod:`.modules`)."""
