"""The turbulence stage: the residual field of the matched stars, its correlation, a GP correction.

In a 30-90 s exposure the atmosphere moves stars by 10-30 mas coherently over 5-10 arcmin
(Bernstein et al. 2017); a TPV polynomial over the whole field cannot follow that, so its
residuals keep it. After the error model this stage, per axis (xi east, eta north):

1. :func:`measure_correlation`: the two-point correlation function of the kept stars'
   residuals on a 2-D grid of separations (treecorr's ``KKCorrelation``, ``bin_type='TwoD'``:
   a ball tree, N log N in the number of stars);
2. :func:`fit_kernel`: an anisotropic von Karman kernel fitted to that correlation
   (Leget et al. 2021, A&A 650, A81): variance, outer scale, axis ratio and angle by
   least squares over the separation bins, so the cost of the fit does not grow with N;
3. :func:`correlation_significance`: the GP runs only when the correlation at short separation
   stands above its own noise (``turbulence.corr_min_sigma``); otherwise the solution stays TPV
   only at the cost of the correlation alone;
4. :func:`local_gp` and :func:`cross_validation`: k-fold cross-validation on held-back stars,
   exactly (a fold is left out of each block's solve in closed form, Rasmussen & Williams 2006,
   eq. 5.12 for a set of points instead of one), on the stars of blocks drawn at random up to
   ``turbulence.cv_max_stars``: the gate's decision rests on that sample;
5. :func:`correction_field`: when it passes, the GP's posterior mean and variance on a grid of nodes.

The GP is solved block by block (:func:`local_gp`): the field is cut into square blocks of
``block_arcmin``; each is conditioned on the stars within it and a halo of ``halo_arcmin``
around it, at most ``max_block_stars`` of them. A block costs O(n^3) in its own stars n, and
the blocks grow in number with the field's area, so at a given density the cost is linear
in the number of stars, and bounded by ``max_block_stars`` at any density.

The correction is the GP's mean residual field r(p) carried back to pixels,
``dp = -J(p)^-1 r(p)`` with J the TPV's local Jacobian: the FITS distortion-paper form
(``CPDIS``/``WCSDVARR``), which astropy applies to the pixel coordinates before the TPV,
bilinearly between the table's nodes (:meth:`TurbulenceField.pixel_offsets` does the
same). :func:`predicted_error` gives the solution's honest error, corrected or not.

Units: residuals in mas on the tangent plane, positions in 0-based pixels, separations in
pixels unless a name says otherwise.

The modules: :mod:`.kernel` (correlation, kernel), :mod:`.gp` (local GP, cross-validation),
:mod:`.field` (the lookup tables' grid), :mod:`.predicted` (the predicted error), :mod:`.stage`
(:func:`correct_turbulence`, the steps in order).
"""

from astrodask.solve.turbulence.field import (Jacobian, TurbulenceField, corrected_pixel_to_world, correction_field,
                                              grid_nodes)
from astrodask.solve.turbulence.gp import (CrossValidation, GPBlock, LocalGP, cross_validation, cv_sample, gp_blocks,
                                           local_gp)
from astrodask.solve.turbulence.kernel import (ARCSEC_PER_ARCMIN, AXES, MAS_PER_DEG, Correlation2D,
                                               CorrelationSignificance, CurlFreeKernel, correlation_sample,
                                               correlation_significance, curl_free_correlation, fit_kernel,
                                               measure_correlation, near_pairs)
from astrodask.solve.turbulence.predicted import (PredictedError, ResidualVariance, field_variance_bound,
                                                  fit_pair_covariance_mas2, fit_variance_mas2, frame_systematic_mas,
                                                  leverage, predicted_error, residual_variance,
                                                  short_range_covariance)
from astrodask.solve.turbulence.stage import TurbulenceResult, correct_turbulence

__all__ = ["ARCSEC_PER_ARCMIN", "AXES", "MAS_PER_DEG", "Correlation2D", "CorrelationSignificance", "CrossValidation",
           "CurlFreeKernel", "GPBlock", "Jacobian", "LocalGP", "PredictedError", "ResidualVariance", "TurbulenceField",
           "TurbulenceResult", "correct_turbulence", "corrected_pixel_to_world", "correction_field",
           "correlation_sample", "correlation_significance", "cross_validation", "cv_sample",
           "curl_free_correlation", "field_variance_bound", "fit_kernel", "fit_pair_covariance_mas2",
           "fit_variance_mas2", "frame_systematic_mas", "gp_blocks", "grid_nodes", "leverage", "local_gp",
           "measure_correlation", "near_pairs", "predicted_error", "residual_variance", "short_range_covariance"]
