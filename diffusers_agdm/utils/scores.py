"""The names of the K-run scores (standard library only, so that flags and reports can name them without torch); the
rule itself lives in `diffusers_agdm.attacks.scoring`."""

# "all K runs correct" (worst-of-K), "majority of K", and one run (run 0), as papers that score one run.
SCORES = ("all", "majority", "single")
