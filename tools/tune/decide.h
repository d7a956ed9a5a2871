/* decide.h: mha-tune's verdict on one kernel variant against the default,
 * from paired rounds timed in the same run. A loaded machine makes any
 * single comparison a coin toss, so a candidate is picked only when it
 * wins by more than the noise the same rounds measured; otherwise the
 * default stays. Pure (times in, verdict out), so tests feed it synthetic
 * timings. */
#ifndef MHA_TUNE_DECIDE_H
#define MHA_TUNE_DECIDE_H

/* The least margin a candidate must win by, whatever the measured noise
 * (a 5% gain is not worth a variant nobody else runs). */
#define TUNE_MIN_MARGIN 0.05
/* Fewer paired rounds than this prove nothing (budget ran out). */
#define TUNE_MIN_ROUNDS 3
/* The most rounds tune_decide() reads. */
#define TUNE_MAX_ROUNDS 64

typedef struct tune_verdict {
    int rounds;    /* paired rounds used (all times > 0) */
    int wins;      /* rounds in which the candidate was faster */
    double ratio;  /* median over rounds of default ms / candidate ms
                      (> 1: the candidate is faster); 0 when unusable */
    double spread; /* the default's own spread: interquartile range of its
                      round times over their median */
    double needed; /* the ratio to beat: 1 + max(TUNE_MIN_MARGIN, spread) */
    double base_ms, cand_ms; /* median round times */
    int picked;    /* ratio > needed, wins in more than 2/3 of the rounds,
                      and at least TUNE_MIN_ROUNDS rounds */
} tune_verdict;

/* The verdict on a candidate from rounds pairs (base_ms[i], cand_ms[i]),
 * each timed back to back in the same round. A round with a time that is
 * not > 0 (a failed forward) makes the verdict unusable: not picked,
 * ratio 0. rounds is at most TUNE_MAX_ROUNDS (more are ignored). */
void tune_decide(const double *base_ms, const double *cand_ms, int rounds,
                 tune_verdict *v);

/* The verdict in words for the human output, the noise being the margin
 * used (needed - 1): "1.31x, beyond noise 5%
 * (won 5/5)", "1.03x, within noise 6% (won 3/5)", "1.12x, beyond noise
 * 4% but won only 3/5", "1.20x, too few rounds (2) to judge", "failed" (a
 * forward failed), "not measured (over budget)" (no round). */
void tune_verdict_text(const tune_verdict *v, char *out, unsigned size);

#endif /* MHA_TUNE_DECIDE_H */
