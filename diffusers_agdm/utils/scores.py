"""The names of the K-run scores (standard library only, so that flags and reports can name them without torch); the
rule itself lives in `diffusers_agdm.attacks.scoring`."""

# "all K runs correct" (worst-of-K), "majority of K", and one run (run 0), as papers that score one run.
SCORES = ("all", "majority", "single")

# How each score is named: report headings, sentences of the card and README ("majority of 5 runs"), plot titles.
SCORE_TITLES = {
    "all": "robust in all {k} defense runs (conservative)",
    "majority": "robust in a majority of {k} defense runs",
    "single": "robust in one defense run (as papers that score one run)",
}
SCORE_WORDS = {"all": "all {k} runs", "majority": "majority of {k} runs", "single": "one run"}
SCORE_PLOT_TITLES = {"all": "robust in all K runs", "majority": "robust in a majority of K",
                     "single": "robust in one run"}
