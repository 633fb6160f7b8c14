"""The simulator (pure, seeded): a vLLM-style fleet (:mod:`.fleet`) timed by the step model,
seen as Prometheus shows it (:mod:`.signals`), scaled by our policy and the anchors
(:mod:`.policies`), on traces and generated stress scenarios (:mod:`.workload`,
:mod:`.scenarios`); :mod:`.engine` runs and scores them, :mod:`.report` writes reports.
"""
