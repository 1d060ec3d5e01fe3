"""The peer solver of the benchmarks: SourceExtractor + SCAMP, run offline on one exposure.

:func:`solve_with_scamp` takes an exposure written by :func:`astrodask.simulate.simulate_field`
(``X.fits.fz``, image in HDU 1, an approximate TAN header) and the reference catalog file
the astrodask solver reads (``X_gaia.ecsv``), and

1. decompresses the image to a plain FITS file in a scratch folder (SExtractor 2.25 does
   not read tile-compressed files), keeping the approximate header;
2. runs ``source-extractor`` with FITS_LDAC output and the measurements SCAMP needs
   (windowed centroids and their error ellipses, FLUX_AUTO, FLAGS, FLUX_RADIUS,
   ELONGATION), a Gaussian matched filter of the simulated PSF's FWHM;
3. writes the reference catalog as FITS_LDAC (X_WORLD, Y_WORLD, ERRA_WORLD, ERRB_WORLD,
   MAG, MAGERR, OBSDATE) from the same Gaia stars, **propagated to the exposure's epoch
   with** :func:`astrodask.reference.catalog.propagate_table` (the same positions the astrodask solver
   uses; SCAMP's own proper-motion support is not used: no PM columns are written);
4. runs ``scamp -ASTREF_CATALOG FILE`` with a TPV distortion of degree 3 and no photometric
   solution, reads the ``.head`` it writes and builds an astropy WCS from the approximate
   header updated with those keywords.

It returns a :class:`PeerResult`: status (``"solved"`` or ``"failed"`` with SCAMP's or
SExtractor's message), the WCS, SCAMP's own count of matched reference stars and its
chi-square, wall times of each step and the tools' peak memory (each tool's own
``VmHWM``, see :func:`run_tool`).

Pixel convention: SExtractor and SCAMP work in 1-based FITS pixels; the WCS built here from
FITS keywords is evaluated by astropy with 0-based pixels (``pixel_to_world_values``), like
the truth WCS, so the two are compared at the same pixels.

Usage on its own: python benchmarks/peers.py X.fits.fz X_gaia.ecsv SCRATCH_DIR
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

#: The SExtractor executable (Debian's name; upstream calls it ``sex``).
SEXTRACTOR = "source-extractor"
#: The SCAMP executable.
SCAMP = "scamp"
#: Where Debian installs SExtractor's filters.
SEXTRACTOR_SHARE = Path("/usr/share/source-extractor")
#: Matched filter: a Gaussian of the simulated PSF's FWHM (2.5 px).
SEXTRACTOR_FILTER = "gauss_2.5_5x5.conv"
#: Detection threshold, sigmas per pixel (SCAMP then keeps S/N > SN_THRESHOLDS[0]).
DETECT_THRESH_SIGMA = 3.0
#: Minimum connected pixels above the threshold.
DETECT_MINAREA_PX = 5
#: SExtractor memory: enough for 250,000 sources on a full Condor frame.
SEXTRACTOR_MEMORY = {"MEMORY_OBJSTACK": "50000", "MEMORY_PIXSTACK": "5000000", "MEMORY_BUFSIZE": "2048"}
#: The catalog columns SCAMP reads (and a few to look at).
SEXTRACTOR_PARAMS = (
    "NUMBER", "XWIN_IMAGE", "YWIN_IMAGE", "ERRAWIN_IMAGE", "ERRBWIN_IMAGE", "ERRTHETAWIN_IMAGE",
    "X_IMAGE", "Y_IMAGE", "FLUX_AUTO", "FLUXERR_AUTO", "MAG_AUTO", "MAGERR_AUTO", "FLUX_RADIUS",
    "FWHM_IMAGE", "ELONGATION", "FLAGS",
)
#: TPV polynomial degree of the SCAMP solution.
SCAMP_DISTORT_DEGREE = 3
#: Largest pointing error SCAMP searches, arcmin (the simulated headers are a few arcmin off).
SCAMP_POSITION_MAXERR_ARCMIN = 10.0
#: Largest rotation error SCAMP searches, degrees (simulated: 0.5 deg).
SCAMP_POSANGLE_MAXERR_DEG = 5.0
#: Largest scale error SCAMP searches, a factor (simulated: 0.3 %).
SCAMP_PIXSCALE_MAXERR = 1.2
#: Reference magnitude error written when the catalog has none, mag.
DEFAULT_MAGERR = 0.01
#: Floor of the reference position errors written to ERRA/ERRB_WORLD, mas.
REF_ERROR_FLOOR_MAS = 0.1
#: Days per Julian year and the MJD of J2000.0.
DAYS_PER_JULIAN_YEAR = 365.25
J2000_MJD = 51544.5
#: SCAMP warnings that say nothing about the solution (left out of the reported reason).
BENIGN_WARNINGS = ("ATLAS library", "using internal defaults")
#: Reference stars are looked for on the image grown by this fraction of its size on each side.
FOOTPRINT_MARGIN = 0.1
#: Interval of the peak-memory polling of a running tool, seconds.
POLL_S = 0.01
#: Time limit of each tool, seconds.
TOOL_TIMEOUT_S = 300.0


@dataclass
class ToolRun:
    """One run of an external tool."""

    wall_s: float
    maxrss_mb: float
    returncode: int
    log: str  #: stderr (SExtractor and SCAMP write their messages there)


@dataclass
class PeerResult:
    """What SExtractor + SCAMP made of one exposure."""

    status: str  #: "solved" or "failed"
    reason: str = ""
    wcs: WCS | None = None
    n_sources: int | None = None  #: SExtractor detections
    n_matches: int | None = None  #: SCAMP's matched reference stars
    chi2_dof: float | None = None  #: SCAMP's astrometric chi2/dof against the reference
    sigma_ref_arcsec: tuple[float, float] | None = None  #: SCAMP's rms residuals against the reference
    times_s: dict[str, float] = field(default_factory=dict)  #: prep, sextractor, ref, scamp, total
    maxrss_mb: dict[str, float] = field(default_factory=dict)  #: sextractor, scamp
    head_text: str = ""  #: the .head SCAMP wrote


# --------------------------------------------------------------------------
# Running a tool
# --------------------------------------------------------------------------


def _vm_hwm_mb(pid: int) -> float | None:
    """Peak resident memory of a running process (``VmHWM``), MB; None once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def run_tool(args: list[str], *, cwd: Path, timeout_s: float = TOOL_TIMEOUT_S) -> ToolRun:
    """Run an external program: its wall time, its own peak memory and its messages.

    Peak memory is the child's ``VmHWM`` (``/proc``), read every POLL_S until it exits:
    ``ru_maxrss`` from ``wait4`` is no good here, since Linux carries a process's
    high-water mark across ``execve``, so every child would report at least the
    benchmark's own peak. Falls back to ``ru_maxrss`` where ``/proc`` is absent.
    """
    out_path, err_path = cwd / f"{Path(args[0]).name}.stdout", cwd / f"{Path(args[0]).name}.stderr"
    started = time.perf_counter()
    peak_mb: float | None = None
    killed = False
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(args, cwd=cwd, stdout=out, stderr=err)
        while True:
            hwm = _vm_hwm_mb(proc.pid)
            if hwm is not None:
                peak_mb = max(peak_mb or 0.0, hwm)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout_s:
                proc.kill()
                killed = True
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(POLL_S)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    log = err_path.read_text(errors="replace") + out_path.read_text(errors="replace")
    if killed:
        log += f"\n(killed after {timeout_s:.0f} s)"
    maxrss = peak_mb if peak_mb is not None else usage.ru_maxrss / 1024.0
    return ToolRun(wall_s=wall, maxrss_mb=maxrss, returncode=proc.returncode, log=log)


def last_error(run: ToolRun) -> str:
    """The exit code and the last error or warning of a SExtractor/SCAMP log (benign ones left out)."""
    lines = [ln.strip().lstrip("> ").strip() for ln in run.log.replace("\r", "\n").splitlines()]
    lines = [ln for ln in lines if ln and not any(b in ln for b in BENIGN_WARNINGS)]
    code = f"exit code {run.returncode}" if run.returncode else "exit code 0 but no output"
    for ln in reversed(lines):
        if any(w in ln.lower() for w in ("error", "warning", "killed")):
            return f"{code}: {ln}"
    return f"{code}; last message: {lines[-1] if lines else '(none)'}"


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------


#: Keywords of a DSS plate solution (SCAMP does not read them; removed when a WCS guess replaces them).
DSS_KEYWORDS = ("PPO", "AMDX", "AMDY", "PLTRA", "PLTDEC", "CNPIX", "XPIXELSZ", "YPIXELSZ", "PLTSCALE")
#: Celestial WCS keywords replaced by a WCS guess.
WCS_KEYWORDS = ("CTYPE", "CRVAL", "CRPIX", "CDELT", "CD1_", "CD2_", "PC1_", "PC2_", "CROTA", "CUNIT", "PV1_", "PV2_",
                "A_", "B_", "AP_", "BP_", "LONPOLE", "LATPOLE", "RADESYS", "EQUINOX", "WCSAXES")
#: Grid points per axis when fitting a TAN guess to another WCS (a DSS plate solution).
TAN_GUESS_GRID = 15


def decompress(image_path: Path, out_path: Path, *, wcs_guess: fits.Header | None = None) -> fits.Header:
    """Write the image of ``image_path`` (first HDU with data) as a plain FITS file; its header.

    With ``wcs_guess``, the header's own WCS and DSS plate-solution keywords are replaced by
    the guess's keywords (a TAN WCS SCAMP can start from, and MJD-OBS/EXPTIME if given).
    """
    with fits.open(image_path) as hdus:
        hdu = next(h for h in hdus if h.data is not None and h.data.ndim == 2)
        header = hdu.header.copy()
        data = hdu.data
        for key in ("XTENSION", "PCOUNT", "GCOUNT", "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZNAXIS1", "ZNAXIS2",
                    "ZTILE1", "ZTILE2", "ZCMPTYPE", "ZNAME1", "ZVAL1", "ZNAME2", "ZVAL2", "ZQUANTIZ",
                    "CHECKSUM", "DATASUM"):
            header.remove(key, ignore_missing=True)
        if wcs_guess is not None:
            for key in [k for k in header if k.startswith(DSS_KEYWORDS + WCS_KEYWORDS)]:
                header.remove(key, ignore_missing=True, remove_all=True)
            for card in wcs_guess.cards:
                if card.keyword not in ("", "COMMENT", "HISTORY"):
                    header[card.keyword] = (card.value, card.comment)
        fits.PrimaryHDU(data=data, header=header).writeto(out_path, overwrite=True)
    return header


def tan_guess_from_wcs(wcs: WCS, shape: tuple[int, int]) -> fits.Header:
    """A plain TAN header fitted (astropy ``fit_wcs_from_points``) to any WCS over an (ny, nx) image.

    For SCAMP, which reads no DSS plate solution: the DSS keywords are evaluated by astropy
    (wcslib), the TAN is fitted to them on a TAN_GUESS_GRID grid of 0-based pixels.
    """
    from astropy.coordinates import SkyCoord
    from astropy.wcs.utils import fit_wcs_from_points

    ny, nx = shape
    gi, gj = np.meshgrid(np.linspace(0, nx - 1, TAN_GUESS_GRID), np.linspace(0, ny - 1, TAN_GUESS_GRID))
    ra, dec = wcs.pixel_to_world_values(gi.ravel(), gj.ravel())
    centre = SkyCoord(*wcs.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0), unit="deg")
    fitted = fit_wcs_from_points((gi.ravel(), gj.ravel()), SkyCoord(ra, dec, unit="deg"), proj_point=centre,
                                 projection="TAN")
    from astrodask.simulate import cd_header

    return cd_header(fitted)


def exposure_epoch_yr(header: fits.Header) -> float:
    """Mid-exposure Julian epoch from MJD-OBS (else ISO DATE-OBS) at the start and EXPTIME, years."""
    if "MJD-OBS" in header:
        start = float(header["MJD-OBS"])
    else:
        from astropy.time import Time

        start = float(Time(str(header["DATE-OBS"]), scale="utc").mjd)
    mjd = start + float(header.get("EXPTIME", 0.0)) / 2.0 / 86400.0
    return 2000.0 + (mjd - J2000_MJD) / DAYS_PER_JULIAN_YEAR


def ldac_imhead(header: fits.Header) -> fits.BinTableHDU:
    """The LDAC_IMHEAD table: the header text as one cell of 80-character cards."""
    text = header.tostring(sep="", endcard=True, padding=False)
    n_cards = len(text) // 80
    cards = np.array([[text[k * 80:(k + 1) * 80] for k in range(n_cards)]], dtype="S80")
    col = fits.Column(name="Field Header Card", format=f"{80 * n_cards}A", dim=f"(80, {n_cards})", array=cards)
    return fits.BinTableHDU.from_columns([col], name="LDAC_IMHEAD")


def write_reference_ldac(catalog_path: Path, out_path: Path, *, epoch_yr: float,
                         image_header: fits.Header | None = None) -> tuple[int, int]:
    """Write the Gaia stars of ``catalog_path`` as a SCAMP FITS_LDAC reference catalog.

    Positions are propagated to ``epoch_yr`` with :func:`astrodask.reference.catalog.propagate_table`
    (OBSDATE = ``epoch_yr``), errors are ra_error/dec_error (mas, floored at
    REF_ERROR_FLOOR_MAS) as an error ellipse in degrees, MAG is Gaia G. Returns the row
    count and, given the image header, how many rows fall on the image through its
    approximate WCS (grown by FOOTPRINT_MARGIN on each side).
    """
    from astrodask.reference.catalog import propagate_table, read_catalog

    table = propagate_table(read_catalog(catalog_path), epoch_yr)
    ra = np.asarray(table["ra"], dtype=np.float64)
    dec = np.asarray(table["dec"], dtype=np.float64)
    e_ra = np.nan_to_num(np.asarray(table["ra_error"], dtype=np.float64), nan=REF_ERROR_FLOOR_MAS)
    e_dec = np.nan_to_num(np.asarray(table["dec_error"], dtype=np.float64), nan=REF_ERROR_FLOOR_MAS)
    err_a = np.maximum(np.maximum(e_ra, e_dec), REF_ERROR_FLOOR_MAS) / 3.6e6
    err_b = np.maximum(np.minimum(e_ra, e_dec), REF_ERROR_FLOOR_MAS) / 3.6e6
    mag = np.asarray(table["phot_g_mean_mag"], dtype=np.float64)
    good = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(mag)
    n = int(good.sum())
    cols = [
        fits.Column(name="X_WORLD", format="D", unit="deg", array=ra[good]),
        fits.Column(name="Y_WORLD", format="D", unit="deg", array=dec[good]),
        fits.Column(name="ERRA_WORLD", format="E", unit="deg", array=err_a[good]),
        fits.Column(name="ERRB_WORLD", format="E", unit="deg", array=err_b[good]),
        fits.Column(name="MAG", format="E", unit="mag", array=mag[good]),
        fits.Column(name="MAGERR", format="E", unit="mag", array=np.full(n, DEFAULT_MAGERR)),
        fits.Column(name="OBSDATE", format="D", unit="yr", array=np.full(n, epoch_yr)),
        fits.Column(name="FLAGS", format="I", array=np.zeros(n, dtype=np.int16)),
    ]
    objects = fits.BinTableHDU.from_columns(cols, name="LDAC_OBJECTS")
    head = fits.Header()
    head["SIMPLE"] = True
    head["BITPIX"] = 8
    head["NAXIS"] = 0
    head["COMMENT"] = f"Gaia reference stars of {catalog_path.name} at epoch {epoch_yr:.4f}"
    fits.HDUList([fits.PrimaryHDU(), ldac_imhead(head), objects]).writeto(out_path, overwrite=True)
    on_image = n
    if image_header is not None:
        nx, ny = int(image_header["NAXIS1"]), int(image_header["NAXIS2"])
        wcs_header = image_header.copy()
        for key in ("NAXIS", "NAXIS1", "NAXIS2"):
            wcs_header.remove(key, ignore_missing=True)
        with np.errstate(invalid="ignore"):
            i, j = WCS(wcs_header).world_to_pixel_values(ra[good], dec[good])
        mi, mj = FOOTPRINT_MARGIN * nx, FOOTPRINT_MARGIN * ny
        on_image = int(np.count_nonzero((i > -mi) & (i < nx + mi) & (j > -mj) & (j < ny + mj)))
    return n, on_image


def write_config_files(scratch: Path) -> None:
    """default.sex and scamp.conf (the tools' ``-dd`` defaults), the parameter list and the filter."""
    for tool, name in ((SEXTRACTOR, "default.sex"), (SCAMP, "scamp.conf")):
        config = subprocess.run([tool, "-dd"], capture_output=True, text=True, check=True).stdout
        (scratch / name).write_text(config)
    (scratch / "scamp.param").write_text("\n".join(SEXTRACTOR_PARAMS) + "\n")
    shutil.copy(SEXTRACTOR_SHARE / SEXTRACTOR_FILTER, scratch / "filter.conv")


# --------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------


def read_head(head_path: Path) -> fits.Header:
    """The keywords of a SCAMP ``.head`` file (text cards; non-ASCII comment characters dropped)."""
    text = head_path.read_bytes().decode("latin-1")
    text = "".join(ch if 32 <= ord(ch) < 127 or ch == "\n" else " " for ch in text)
    cards = [line.ljust(80)[:80] for line in text.splitlines() if line.strip()]
    return fits.Header.fromstring("".join(cards))


def wcs_from_head(image_header: fits.Header, head: fits.Header) -> WCS:
    """The approximate image header with SCAMP's keywords put over it, as an astropy WCS (TPV)."""
    merged = image_header.copy()
    for key in ("NAXIS", "NAXIS1", "NAXIS2"):
        merged.remove(key, ignore_missing=True)
    if "CD1_1" in head:  # wcslib prefers PCi_j/CDELTi over CDi_j: the guess's PC form must not survive
        for key in [k for k in merged if k.startswith(("PC1_", "PC2_", "CDELT"))]:
            merged.remove(key, ignore_missing=True, remove_all=True)
    for card in head.cards:
        if card.keyword in ("", "COMMENT", "HISTORY", "END"):
            continue
        merged[card.keyword] = (card.value, card.comment)
    return WCS(merged, relax=True)


def read_scamp_xml(xml_path: Path) -> dict[str, float]:
    """SCAMP's statistics against the reference catalog from its XML (VOTable) report.

    Returns AstromNDets_Reference, AstromChi2_Reference and AstromSigma_Reference (two
    values, arcsec) of the first field group, when present.
    """
    out: dict[str, float] = {}
    if not xml_path.is_file():
        return out
    root = ET.parse(xml_path).getroot()
    strip = lambda tag: tag.rsplit("}", 1)[-1]  # noqa: E731
    for table in root.iter():
        if strip(table.tag) != "TABLE" or table.get("name") != "FGroups":
            continue
        names = [f.get("name") for f in table if strip(f.tag) == "FIELD"]
        row = next((r for r in table.iter() if strip(r.tag) == "TR"), None)
        if row is None:
            break
        values = [td.text or "" for td in row if strip(td.tag) == "TD"]
        cells = dict(zip(names, values))
        for key in ("AstromNDets_Reference", "AstromChi2_Reference"):
            if cells.get(key, "").strip():
                out[key] = float(cells[key].split()[0])
        if cells.get("AstromSigma_Reference", "").strip():
            out["AstromSigma_Reference"] = tuple(float(v) for v in cells["AstromSigma_Reference"].split()[:2])
        break
    return out


# --------------------------------------------------------------------------
# The whole peer
# --------------------------------------------------------------------------


def solve_with_scamp(image_path: str | Path, catalog_path: str | Path, scratch: str | Path, *,
                     keep: bool = False, wcs_guess: fits.Header | None = None) -> PeerResult:
    """Solve one exposure with SExtractor + SCAMP; never raises for a tool's failure.

    Parameters
    ----------
    image_path
        The exposure (``.fits.fz`` or ``.fits``) with an approximate TAN header.
    catalog_path
        The Gaia reference catalog file (any format :func:`astrodask.reference.catalog.read_catalog` reads).
    scratch
        A folder for the decompressed image, the catalogs and the tools' files (emptied first).
    keep
        Keep the decompressed image (it is deleted otherwise: a full Condor frame is 120 MB).
    wcs_guess
        WCS keywords (and MJD-OBS, EXPTIME) to start from instead of the image header's own:
        a TAN pointing for an exposure without WCS, or a TAN fitted to a DSS plate solution
        (:func:`tan_guess_from_wcs`).
    """
    image_path, catalog_path, scratch = Path(image_path), Path(catalog_path), Path(scratch)
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    for tool in (SEXTRACTOR, SCAMP):
        if shutil.which(tool) is None:
            return PeerResult(status="failed", reason=f"{tool} is not installed (Debian: apt-get install "
                              f"{'source-extractor' if tool == SEXTRACTOR else 'scamp'})")
    times: dict[str, float] = {}
    rss: dict[str, float] = {}
    t0 = time.perf_counter()
    plain = scratch / "image.fits"
    header = decompress(image_path, plain, wcs_guess=wcs_guess)
    write_config_files(scratch)
    times["prep"] = time.perf_counter() - t0

    cat = scratch / "image.ldac"
    sex = run_tool([SEXTRACTOR, plain.name, "-c", "default.sex", "-CATALOG_NAME", cat.name,
                    "-CATALOG_TYPE", "FITS_LDAC", "-PARAMETERS_NAME", "scamp.param",
                    "-FILTER", "Y", "-FILTER_NAME", "filter.conv",
                    "-DETECT_THRESH", str(DETECT_THRESH_SIGMA), "-ANALYSIS_THRESH", str(DETECT_THRESH_SIGMA),
                    "-DETECT_MINAREA", str(DETECT_MINAREA_PX), "-SATUR_KEY", "SATURATE",
                    "-GAIN_KEY", "GAIN", "-PIXEL_SCALE", "0", "-CHECKIMAGE_TYPE", "NONE",
                    "-VERBOSE_TYPE", "NORMAL", "-WRITE_XML", "N",
                    *[a for k, v in SEXTRACTOR_MEMORY.items() for a in ("-" + k, v)]], cwd=scratch)
    times["sextractor"] = sex.wall_s
    rss["sextractor"] = sex.maxrss_mb
    if not keep:
        plain.unlink(missing_ok=True)
    if sex.returncode != 0 or not cat.is_file():
        times["total"] = time.perf_counter() - t0
        return PeerResult(status="failed", reason=f"source-extractor {last_error(sex)}",
                          times_s=times, maxrss_mb=rss)
    with fits.open(cat) as hdus:
        n_sources = len(hdus["LDAC_OBJECTS"].data)

    t1 = time.perf_counter()
    ref = scratch / "ref.ldac"
    n_ref, n_ref_on_image = write_reference_ldac(catalog_path, ref, epoch_yr=exposure_epoch_yr(header),
                                                 image_header=header)
    times["ref"] = time.perf_counter() - t1
    if n_ref_on_image == 0:  # SCAMP would spin in its matcher for many minutes, then give up
        times["total"] = time.perf_counter() - t0
        return PeerResult(status="failed", n_sources=n_sources, times_s=times, maxrss_mb=rss,
                          reason=f"none of the {n_ref} reference stars of {catalog_path.name} falls on the "
                                 "image through its approximate header; SCAMP not run")

    scamp = run_tool([SCAMP, cat.name, "-c", "scamp.conf", "-ASTREF_CATALOG", "FILE", "-ASTREFCAT_NAME", ref.name,
                      "-ASTREFCENT_KEYS", "X_WORLD,Y_WORLD", "-ASTREFERR_KEYS", "ERRA_WORLD,ERRB_WORLD",
                      "-ASTREFMAG_KEY", "MAG", "-ASTREFMAGERR_KEY", "MAGERR", "-ASTREFOBSDATE_KEY", "OBSDATE",
                      "-DISTORT_DEGREES", str(SCAMP_DISTORT_DEGREE), "-PROJECTION_TYPE", "TPV",
                      "-SOLVE_PHOTOM", "N", "-MATCH", "Y", "-MOSAIC_TYPE", "UNCHANGED",
                      "-POSITION_MAXERR", str(SCAMP_POSITION_MAXERR_ARCMIN),
                      "-POSANGLE_MAXERR", str(SCAMP_POSANGLE_MAXERR_DEG),
                      "-PIXSCALE_MAXERR", str(SCAMP_PIXSCALE_MAXERR),
                      "-CHECKPLOT_TYPE", "NONE", "-CHECKPLOT_DEV", "NULL", "-WRITE_XML", "Y",
                      "-XML_NAME", "scamp.xml", "-AHEADER_GLOBAL", "none.ahead",
                      "-VERBOSE_TYPE", "NORMAL"], cwd=scratch)
    times["scamp"] = scamp.wall_s
    rss["scamp"] = scamp.maxrss_mb
    times["total"] = time.perf_counter() - t0
    head_path = scratch / "image.head"
    result = PeerResult(status="failed", n_sources=n_sources, times_s=times, maxrss_mb=rss)
    if scamp.returncode != 0 or not head_path.is_file():
        result.reason = f"scamp {last_error(scamp)}"
        return result
    try:
        head = read_head(head_path)
        result.head_text = head.tostring(sep="\n")
        result.wcs = wcs_from_head(header, head)
    except (OSError, ValueError, KeyError) as err:  # an unreadable .head is SCAMP's failure, reported
        result.reason = f"cannot read SCAMP's {head_path}: {err}"
        return result
    stats = read_scamp_xml(scratch / "scamp.xml")
    if "AstromNDets_Reference" in stats:
        result.n_matches = int(stats["AstromNDets_Reference"])
    result.chi2_dof = stats.get("AstromChi2_Reference")
    result.sigma_ref_arcsec = stats.get("AstromSigma_Reference")
    result.status = "solved"
    warnings = [ln.strip() for ln in scamp.log.splitlines()
                if "WARNING" in ln.upper() and not any(b in ln for b in BENIGN_WARNINGS)]
    result.reason = "; ".join(dict.fromkeys(w.lstrip("> ").strip() for w in warnings))[:300]
    return result


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    result = solve_with_scamp(sys.argv[1], sys.argv[2], sys.argv[3], keep=True)
    print(f"status {result.status}: {result.reason}")
    print(f"sources {result.n_sources}, matches {result.n_matches}, chi2/dof {result.chi2_dof}, "
          f"sigma_ref {result.sigma_ref_arcsec} arcsec")
    print("times", {k: round(v, 2) for k, v in result.times_s.items()}, "peak MB", result.maxrss_mb)
    print(result.head_text)


if __name__ == "__main__":
    main()
