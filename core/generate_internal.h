/* generate_internal.h — mtok_generate's steps around one feed, for the library's other prompt kinds.
 *
 * A prompt is fed in more than one way: mtok_session_feed for ids (core/feed.c) and mtok_vision_feed
 * for a conversation with an image (core/vision_prompt.c), whose rows mtok_session_feed's prefix
 * reuse would turn back into placeholder text. Everything around the feed — the request's checks,
 * the sampler, and after it the decode loop (stop ids, eos, stop strings with their held-back text,
 * max_tokens, the context limit, cancel, on_token) — exists once, in core/generate.c, and takes the
 * feed as a function, so it runs after the request was checked and before anything is sampled. */
#ifndef MTOK_GENERATE_INTERNAL_H
#define MTOK_GENERATE_INTERNAL_H

#include "mtok.h"

/* Makes the session hold the prompt with the logits of its last row current, as mtok_session_feed
 * promises; usage gets the prompt's counts and prefill_s (generated_tokens and decode_s are the
 * caller's). Returns 0, MTOK_CANCELLED (the request's cancel, seen inside the feed) or an error.
 * req is never NULL. */
typedef int (*mtok_feed_fn)(mtok_session *s, const void *arg, const mtok_request *req, mtok_usage *usage);

/* mtok_generate with feed(s, feed_arg, req, &res->usage) in place of mtok_session_feed: the same
 * result, return value and session state, for whatever the feed made the session hold. */
int mtok_generate_fed(mtok_session *s, const mtok_tokenizer *t, mtok_feed_fn feed, const void *feed_arg,
                      const mtok_request *req, mtok_result *res);

#endif
