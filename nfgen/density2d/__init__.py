"""2-D flows you can look at: planar, radial and coupling flows fitted to an unnormalised target
density by reverse KL (Rezende & Mohamed, 2015), or to samples by maximum likelihood, with the
pictures and the numbers (true ``log Z`` by quadrature, bound, importance-weighted estimate,
test log-likelihood against the true density's). ``nfgen density2d --config FILE``."""
