// SPDX-License-Identifier: MIT
// tokenizer.c: text <-> token ids for the llama model plugin (see tokenizer.h). Two families:
// SentencePiece-style score merges ("llama") and GPT-2 byte-level BPE with ranked merges and a
// regular-expression pre-tokenizer ("gpt2", regexes on PCRE2). The behaviour follows llama.cpp's
// llama-vocab.cpp / unicode.cpp (read, not copied) so that ids agree with `llama-tokenize`:
// special tokens are split out first (longest text first), each remaining text fragment is
// pre-tokenized and merged, and invalid UTF-8 becomes U+FFFD for the byte-level path.
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer.h"

// GGUF token types (tokenizer.ggml.token_type).
enum {
    TT_UNDEFINED    = 0,
    TT_NORMAL       = 1,
    TT_UNKNOWN      = 2,
    TT_CONTROL      = 3,
    TT_USER_DEFINED = 4,
    TT_UNUSED       = 5,
    TT_BYTE         = 6,
};

enum tok_family { FAM_SPM, FAM_BPE };

#define TOK_MAX_TEXT   ((size_t) 1 << 28)  // longest text one encode call accepts (3x fits int32 offsets)
#define TOK_MAX_REGEX  4                   // regexes of one pre-tokenizer, applied in sequence

// Open-addressing hash table of byte strings (token texts, or merge pairs) -> int32 value.
struct strmap {
    uint64_t * hash;   // (cap) full hash, 0 = empty slot
    int32_t  * val;    // (cap) value
    int32_t  * key;    // (cap) index of the key in the owner's arrays
    uint64_t   mask;   // cap - 1, cap a power of two
};

// Open-addressing hash table (id, id) -> (rank, merged id) for the merges of two tokens.
struct pairmap {
    uint64_t * key;    // (cap) (first + 1) << 32 | (second + 1); 0 = empty slot
    int32_t  * rank;   // (cap)
    int32_t  * id;     // (cap) token id of the merged text, -1 if it is not a token
    uint64_t   mask;
};

struct llm_tokenizer {
    struct caldera_ctx * ctx;
    enum tok_family      fam;
    int64_t              n_vocab;
    char *               arena;      // every token text, merge and piece, back to back
    const char **        text;       // (n_vocab) token text (not NUL-terminated)
    size_t *             text_len;   // (n_vocab)
    float *              score;      // (n_vocab)
    int32_t *            type;       // (n_vocab) GGUF token type
    const char **        piece;      // (n_vocab) decoded bytes, pointers into piece_base
    char *               piece_base;
    size_t *             piece_len;  // (n_vocab)
    struct strmap        vocab;      // text -> id
    // BPE merges: "first second" -> rank (first occurrence wins, as llama.cpp's emplace)
    int64_t              n_merges;
    const char **        m_first;
    size_t *             m_first_len;
    const char **        m_second;
    size_t *             m_second_len;
    struct strmap        merges;
    struct pairmap       pairs;      // (id first, id second) -> rank and merged id, where both are tokens
    // Special tokens (CONTROL, USER_DEFINED, UNKNOWN), longest text first.
    int32_t *            special;
    int64_t              n_special;
    int32_t              bos, eos, eot, unk;
    int                  add_bos;
    int                  add_space_prefix;  // SPM: " " before the first fragment / after a special token
    int                  ignore_merges;     // BPE: a word that is a token is taken whole (llama-bpe)
    // Pre-tokenizer
    char                 pre_name[32];
    int                  n_regex;
    pcre2_code *         re[TOK_MAX_REGEX];
    pcre2_general_context * gctx;
    // GPT-2 byte-level alphabet: byte -> UTF-8 of its symbol (1 or 2 bytes), and back
    char                 byte_sym[256][2];
    uint8_t              byte_sym_len[256];
    int16_t              sym_byte[324];     // code point (< 324) -> byte, -1 if none
    int32_t              byte_id[256];      // byte -> token id of its symbol, -1 if none
};

// ---------------------------------------------------------------------------------------------
// Hashing and the string map.

static uint64_t fnv_update(uint64_t h, const char * s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t) s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t hash_str(const char * s, size_t n) {
    uint64_t h = fnv_update(0xcbf29ce484222325ULL, s, n);
    return h ? h : 1;
}

// A merge pair hashes as first, a separator that is not a byte value, then second.
static uint64_t hash_pair(const char * a, size_t an, const char * b, size_t bn) {
    uint64_t h = fnv_update(0xcbf29ce484222325ULL, a, an);
    h ^= 0x1ff;
    h *= 0x100000001b3ULL;
    h = fnv_update(h, b, bn);
    return h ? h : 1;
}

static int strmap_init(struct strmap * m, int64_t n) {
    uint64_t cap = 16;
    while (cap < (uint64_t) n * 2) cap <<= 1;
    m->mask = cap - 1;
    m->hash = caldera_calloc(cap, sizeof(*m->hash));
    m->val  = caldera_malloc(cap * sizeof(*m->val));
    m->key  = caldera_malloc(cap * sizeof(*m->key));
    return (m->hash && m->val && m->key) ? 0 : CALDERA_ERR_NOMEM;
}

static void strmap_free(struct strmap * m) {
    caldera_freep(&m->hash);
    caldera_freep(&m->val);
    caldera_freep(&m->key);
}

static bool span_eq(const char * a, size_t an, const char * b, size_t bn) {
    return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

// Token text -> id, or -1.
static int32_t vocab_find(const struct llm_tokenizer * t, const char * s, size_t n) {
    const struct strmap * m = &t->vocab;
    uint64_t h = hash_str(s, n);
    for (uint64_t i = h & m->mask;; i = (i + 1) & m->mask) {
        if (m->hash[i] == 0) return -1;
        if (m->hash[i] == h) {
            int32_t k = m->key[i];
            if (span_eq(t->text[k], t->text_len[k], s, n)) return m->val[i];
        }
    }
}

// Insert token id (its text is the key): -1, or the id that already has this text.
static int32_t vocab_insert(struct llm_tokenizer * t, int32_t id) {
    struct strmap * m = &t->vocab;
    uint64_t h = hash_str(t->text[id], t->text_len[id]);
    for (uint64_t i = h & m->mask;; i = (i + 1) & m->mask) {
        if (m->hash[i] == 0) {
            m->hash[i] = h;
            m->key[i] = id;
            m->val[i] = id;
            return -1;
        }
        if (m->hash[i] == h) {
            int32_t k = m->key[i];
            if (span_eq(t->text[k], t->text_len[k], t->text[id], t->text_len[id])) return k;
        }
    }
}

// Rank of merging (a, b), or -1.
static int32_t merge_rank(const struct llm_tokenizer * t, const char * a, size_t an, const char * b, size_t bn) {
    const struct strmap * m = &t->merges;
    uint64_t h = hash_pair(a, an, b, bn);
    for (uint64_t i = h & m->mask;; i = (i + 1) & m->mask) {
        if (m->hash[i] == 0) return -1;
        if (m->hash[i] == h) {
            int32_t k = m->key[i];
            if (span_eq(t->m_first[k], t->m_first_len[k], a, an) && span_eq(t->m_second[k], t->m_second_len[k], b, bn)) {
                return m->val[i];
            }
        }
    }
}

static void merge_insert(struct llm_tokenizer * t, int32_t k) {
    struct strmap * m = &t->merges;
    uint64_t h = hash_pair(t->m_first[k], t->m_first_len[k], t->m_second[k], t->m_second_len[k]);
    for (uint64_t i = h & m->mask;; i = (i + 1) & m->mask) {
        if (m->hash[i] == 0) {
            m->hash[i] = h;
            m->key[i] = k;
            m->val[i] = k;  // rank = position in tokenizer.ggml.merges
            return;
        }
        if (m->hash[i] == h) {
            int32_t j = m->key[i];
            if (span_eq(t->m_first[j], t->m_first_len[j], t->m_first[k], t->m_first_len[k]) &&
                span_eq(t->m_second[j], t->m_second_len[j], t->m_second[k], t->m_second_len[k])) {
                return;  // duplicate merge: the first (lower) rank stays
            }
        }
    }
}

static uint64_t pair_key(int32_t a, int32_t b) {
    return ((uint64_t) (uint32_t) (a + 1) << 32) | (uint32_t) (b + 1);
}

static uint64_t pair_slot(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return k;
}

static int pairmap_init(struct pairmap * m, int64_t n) {
    uint64_t cap = 16;
    while (cap < (uint64_t) n * 2) cap <<= 1;
    m->mask = cap - 1;
    m->key  = caldera_calloc(cap, sizeof(*m->key));
    m->rank = caldera_malloc(cap * sizeof(*m->rank));
    m->id   = caldera_malloc(cap * sizeof(*m->id));
    return (m->key && m->rank && m->id) ? 0 : CALDERA_ERR_NOMEM;
}

static void pairmap_free(struct pairmap * m) {
    caldera_freep(&m->key);
    caldera_freep(&m->rank);
    caldera_freep(&m->id);
}

// Insert unless present (the first, lower rank stays).
static void pair_insert(struct pairmap * m, int32_t a, int32_t b, int32_t rank, int32_t id) {
    uint64_t k = pair_key(a, b);
    for (uint64_t i = pair_slot(k) & m->mask;; i = (i + 1) & m->mask) {
        if (m->key[i] == k) return;
        if (m->key[i] == 0) {
            m->key[i] = k;
            m->rank[i] = rank;
            m->id[i] = id;
            return;
        }
    }
}

static bool pair_find(const struct pairmap * m, int32_t a, int32_t b, int32_t * rank, int32_t * id) {
    uint64_t k = pair_key(a, b);
    for (uint64_t i = pair_slot(k) & m->mask;; i = (i + 1) & m->mask) {
        if (m->key[i] == k) {
            *rank = m->rank[i];
            *id = m->id[i];
            return true;
        }
        if (m->key[i] == 0) return false;
    }
}

// ---------------------------------------------------------------------------------------------
// Growable arrays (caldera_malloc, so the result can be freed with caldera_free).

struct ids_vec { int32_t * v; int64_t n, cap; };

static int ids_push(struct ids_vec * a, int32_t id) {
    if (a->n == a->cap) {
        int64_t cap = a->cap ? a->cap * 2 : 256;
        int32_t * nv = caldera_malloc((size_t) cap * sizeof(*nv));
        if (!nv) return CALDERA_ERR_NOMEM;
        if (a->n) memcpy(nv, a->v, (size_t) a->n * sizeof(*nv));
        caldera_free(a->v);
        a->v = nv;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

struct span { int64_t off, len; int32_t tok; };  // tok >= 0: a special token; else raw text
struct span_vec { struct span * v; int64_t n, cap; };

static int span_push(struct span_vec * a, int64_t off, int64_t len, int32_t tok) {
    if (a->n == a->cap) {
        int64_t cap = a->cap ? a->cap * 2 : 64;
        struct span * nv = caldera_malloc((size_t) cap * sizeof(*nv));
        if (!nv) return CALDERA_ERR_NOMEM;
        if (a->n) memcpy(nv, a->v, (size_t) a->n * sizeof(*nv));
        caldera_free(a->v);
        a->v = nv;
        a->cap = cap;
    }
    a->v[a->n++] = (struct span) { off, len, tok };
    return 0;
}

// ---------------------------------------------------------------------------------------------
// UTF-8.

// Length of the UTF-8 sequence a lead byte announces (1 for continuation and invalid bytes), as
// SentencePiece and llama.cpp split text into symbols.
static size_t utf8_lead_len(uint8_t c) {
    static const uint8_t len[16] = { 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4 };
    return len[c >> 4];
}

static size_t utf8_put(uint32_t cp, char * out) {
    if (cp < 0x80) {
        out[0] = (char) cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char) (0xc0 | (cp >> 6));
        out[1] = (char) (0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char) (0xe0 | (cp >> 12));
        out[1] = (char) (0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char) (0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char) (0xf0 | (cp >> 18));
    out[1] = (char) (0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char) (0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char) (0x80 | (cp & 0x3f));
    return 4;
}

// Rewrite s[0..n) as valid UTF-8 into out (room for 3 * n bytes): a lead byte with the
// continuation bytes its high bits announce is decoded (over-long forms included, as llama.cpp
// does, and written back in shortest form); any other byte becomes U+FFFD. Code points that
// UTF-8 forbids (surrogates, above U+10FFFF) also become U+FFFD so that PCRE2 can run without
// its UTF check. Returns the output length.
static size_t utf8_sanitize(const char * s, size_t n, char * out) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint8_t c = (uint8_t) s[i];
        uint32_t cp = 0xfffd;
        size_t k = 1;
        if (c < 0x80) {
            cp = c;
        } else if ((c & 0x40) == 0) {
            // stray continuation byte
        } else if ((c & 0x20) == 0) {
            if (i + 1 < n && ((uint8_t) s[i + 1] & 0xc0) == 0x80) {
                cp = ((uint32_t) (c & 0x1f) << 6) | ((uint8_t) s[i + 1] & 0x3f);
                k = 2;
            }
        } else if ((c & 0x10) == 0) {
            if (i + 2 < n && ((uint8_t) s[i + 1] & 0xc0) == 0x80 && ((uint8_t) s[i + 2] & 0xc0) == 0x80) {
                cp = ((uint32_t) (c & 0x0f) << 12) | ((uint32_t) ((uint8_t) s[i + 1] & 0x3f) << 6) | ((uint8_t) s[i + 2] & 0x3f);
                k = 3;
            }
        } else if ((c & 0x08) == 0) {
            if (i + 3 < n && ((uint8_t) s[i + 1] & 0xc0) == 0x80 && ((uint8_t) s[i + 2] & 0xc0) == 0x80 &&
                ((uint8_t) s[i + 3] & 0xc0) == 0x80) {
                cp = ((uint32_t) (c & 0x07) << 18) | ((uint32_t) ((uint8_t) s[i + 1] & 0x3f) << 12) |
                     ((uint32_t) ((uint8_t) s[i + 2] & 0x3f) << 6) | ((uint8_t) s[i + 3] & 0x3f);
                k = 4;
            }
        }
        if ((cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) cp = 0xfffd;
        o += utf8_put(cp, out + o);
        i += k;
    }
    return o;
}

// ---------------------------------------------------------------------------------------------
// Merge queue: a binary max-heap of candidate pairs (left, right) with their priority; ties go
// to the leftmost pair. Stale entries (a side changed since the push) are skipped when popped.

struct bigram {
    float   prio;      // SPM: score of the merged token; BPE: -rank (exact: ranks < 2^24)
    int32_t left;      // left symbol; the right one is its next
    int32_t len;       // byte length of the pair when pushed (a side that changed makes it stale)
    int32_t id;        // token id of the merged text, -1 if it is not a token
};  // 16 bytes: the queue of a long SentencePiece text holds ~one entry per character

struct heap { struct bigram * v; int64_t n, cap; };

static bool bigram_before(const struct bigram * a, const struct bigram * b) {
    return a->prio > b->prio || (a->prio == b->prio && a->left < b->left);
}

static int heap_push(struct heap * h, struct bigram b) {
    if (h->n == h->cap) {
        int64_t cap = h->cap ? h->cap * 2 : 64;
        struct bigram * nv = caldera_malloc((size_t) cap * sizeof(*nv));
        if (!nv) return CALDERA_ERR_NOMEM;
        if (h->n) memcpy(nv, h->v, (size_t) h->n * sizeof(*nv));
        caldera_free(h->v);
        h->v = nv;
        h->cap = cap;
    }
    int64_t i = h->n++;
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!bigram_before(&b, &h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = b;
    return 0;
}

static struct bigram heap_pop(struct heap * h) {
    struct bigram top = h->v[0];
    struct bigram last = h->v[--h->n];
    int64_t i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && bigram_before(&h->v[c + 1], &h->v[c])) c++;
        if (!bigram_before(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n > 0) h->v[i] = last;
    return top;
}

struct symbol { int32_t prev, next; int32_t off, n; int32_t id; };  // a span of the word being merged, its token id or -1

struct sym_vec { struct symbol * v; int64_t cap; };

static int sym_reserve(struct sym_vec * s, int64_t n) {
    if (n <= s->cap) return 0;
    caldera_free(s->v);
    s->cap = n < 256 ? 256 : n;
    s->v = caldera_malloc((size_t) s->cap * sizeof(*s->v));
    return s->v ? 0 : CALDERA_ERR_NOMEM;
}

// Scratch buffers of one encode call.
struct work {
    struct ids_vec    out;
    struct heap       heap;
    struct sym_vec    sym;
    char *            buf;     // escaped / sanitized / byte-encoded text
    size_t            buf_cap;
    struct span_vec   pieces, next;
    pcre2_match_data * md;
};

static int buf_reserve(struct work * w, size_t n) {
    if (n <= w->buf_cap) return 0;
    caldera_free(w->buf);
    w->buf_cap = n < 4096 ? 4096 : n;
    w->buf = caldera_malloc(w->buf_cap);
    return w->buf ? 0 : CALDERA_ERR_NOMEM;
}

// Push the candidate merge of symbols l and r (both >= 0) if there is one. SPM: the merged text
// must be a token, its score is the priority; BPE: the pair must be a merge, -rank is the
// priority (by token ids when both sides are tokens, else by their texts).
static int try_pair(const struct llm_tokenizer * t, struct work * w, const char * s, int32_t l, int32_t r) {
    const struct symbol * sym = w->sym.v;
    float prio;
    int32_t id;
    if (l < 0 || r < 0) return 0;
    if (t->fam == FAM_SPM) {
        int32_t unused;
        if (sym[l].id >= 0 && sym[r].id >= 0) {
            if (!pair_find(&t->pairs, sym[l].id, sym[r].id, &unused, &id)) return 0;  // the pairs of tokens that make a token
        } else {
            id = vocab_find(t, s + sym[l].off, (size_t) sym[l].n + (size_t) sym[r].n);
        }
        if (id < 0) return 0;
        prio = t->score[id];
    } else if (sym[l].id >= 0 && sym[r].id >= 0) {
        int32_t rank;
        if (!pair_find(&t->pairs, sym[l].id, sym[r].id, &rank, &id)) return 0;
        prio = -(float) rank;
    } else {
        int32_t rank = merge_rank(t, s + sym[l].off, (size_t) sym[l].n, s + sym[r].off, (size_t) sym[r].n);
        if (rank < 0) return 0;
        prio = -(float) rank;
        id = vocab_find(t, s + sym[l].off, (size_t) sym[l].n + (size_t) sym[r].n);
    }
    return heap_push(&w->heap, (struct bigram) { prio, l, sym[l].n + sym[r].n, id });
}

// Run the merge loop over the symbols of s[0..n) already placed in w->sym (chained by
// prev/next, count n_sym, each with its token id or -1). Pops the best candidate, skips it when
// a side changed since it was pushed, merges, and pushes the two new neighbour pairs: O(n log n).
static int merge_symbols(const struct llm_tokenizer * t, struct work * w, const char * s, int32_t n_sym) {
    struct symbol * sym = w->sym.v;
    int rc;
    w->heap.n = 0;
    for (int32_t i = 1; i < n_sym; i++) {
        if ((rc = try_pair(t, w, s, i - 1, i)) < 0) return rc;
    }
    while (w->heap.n > 0) {
        struct bigram b = heap_pop(&w->heap);
        struct symbol * l = &sym[b.left];
        if (l->n == 0 || l->next < 0) continue;  // merged into its left neighbour, or last
        struct symbol * r = &sym[l->next];
        if (l->n + r->n != b.len) continue;      // a side grew since the push: stale
        l->n += r->n;
        l->id = b.id;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = b.left;
        r->next = -1;
        if ((rc = try_pair(t, w, s, l->prev, b.left)) < 0 || (rc = try_pair(t, w, s, b.left, l->next)) < 0) return rc;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// SentencePiece ("llama").

static int32_t spm_byte_token(const struct llm_tokenizer * t, uint8_t c) {
    static const char hex[] = "0123456789ABCDEF";
    char b[6] = { '<', '0', 'x', hex[c >> 4], hex[c & 15], '>' };
    int32_t id = vocab_find(t, b, 6);
    if (id < 0) id = vocab_find(t, (const char *) &c, 1);
    return id;
}

// One raw fragment: optional " " prefix, spaces escaped to U+2581, merged by score; symbols that
// are not tokens fall back to byte tokens <0xAB>, else the unknown token.
static int spm_encode_fragment(const struct llm_tokenizer * t, struct work * w, const char * text, size_t len,
                               bool prefix_space) {
    size_t need = 3 * (len + 1);
    int rc;
    if ((rc = buf_reserve(w, need)) < 0) return rc;
    char * s = w->buf;
    size_t n = 0;
    if (prefix_space) {
        memcpy(s, "\xe2\x96\x81", 3);
        n = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(s + n, "\xe2\x96\x81", 3);
            n += 3;
        } else {
            s[n++] = text[i];
        }
    }
    if (n == 0) return 0;
    if ((rc = sym_reserve(&w->sym, (int64_t) n)) < 0) return rc;
    int32_t n_sym = 0;
    for (size_t off = 0; off < n;) {
        size_t k = utf8_lead_len((uint8_t) s[off]);
        if (k > n - off) k = n - off;
        w->sym.v[n_sym] = (struct symbol) { n_sym - 1, off + k == n ? -1 : n_sym + 1, (int32_t) off, (int32_t) k,
                                            vocab_find(t, s + off, k) };
        n_sym++;
        off += k;
    }
    if ((rc = merge_symbols(t, w, s, n_sym)) < 0) return rc;
    for (int32_t i = 0; i != -1; i = w->sym.v[i].next) {
        const struct symbol * y = &w->sym.v[i];
        if (y->id >= 0) {
            if ((rc = ids_push(&w->out, y->id)) < 0) return rc;
            continue;
        }
        for (int32_t j = 0; j < y->n; j++) {
            int32_t b = spm_byte_token(t, (uint8_t) s[y->off + j]);
            if (b < 0) b = t->unk;
            if (b < 0) {
                return caldera_ctx_error(t->ctx, CALDERA_ERR_UNSUPPORTED,
                                         "tokenizer: byte 0x%02X has no token (<0x%02X>) and the vocabulary has no unknown token",
                                         (uint8_t) s[y->off + j], (uint8_t) s[y->off + j]);
            }
            if ((rc = ids_push(&w->out, b)) < 0) return rc;
        }
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Byte-level BPE ("gpt2").

// Split the (valid UTF-8) text s[0..n) with the pre-tokenizer's regexes in sequence; each regex
// splits every current piece into its matches and the text between them (both kept), as
// llama.cpp's unicode_regex_split does. Result in w->pieces.
static int bpe_pretokenize(const struct llm_tokenizer * t, struct work * w, const char * s, size_t n) {
    int rc;
    w->pieces.n = 0;
    if ((rc = span_push(&w->pieces, 0, (int64_t) n, -1)) < 0) return rc;
    for (int r = 0; r < t->n_regex; r++) {
        w->next.n = 0;
        for (int64_t p = 0; p < w->pieces.n; p++) {
            const struct span pc = w->pieces.v[p];
            PCRE2_SPTR subj = (PCRE2_SPTR) (s + pc.off);
            PCRE2_SIZE sn = (PCRE2_SIZE) pc.len, at = 0, last = 0;
            while (at < sn) {
                int m = pcre2_match(t->re[r], subj, sn, at, PCRE2_NO_UTF_CHECK, w->md, NULL);
                if (m == PCRE2_ERROR_JIT_STACKLIMIT) {
                    m = pcre2_match(t->re[r], subj, sn, at, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, w->md, NULL);
                }
                if (m == PCRE2_ERROR_NOMATCH) break;
                if (m == PCRE2_ERROR_NOMEMORY) return CALDERA_ERR_NOMEM;
                if (m < 0) {
                    PCRE2_UCHAR msg[160];
                    pcre2_get_error_message(m, msg, sizeof(msg));
                    return caldera_ctx_error(t->ctx, CALDERA_ERR_UNSUPPORTED,
                                             "tokenizer: pre-tokenizer '%s' regex %d failed at byte %" PRId64 ": %s",
                                             t->pre_name, r + 1, pc.off + (int64_t) at, (const char *) msg);
                }
                const PCRE2_SIZE * ov = pcre2_get_ovector_pointer(w->md);
                PCRE2_SIZE ms = ov[0], me = ov[1];
                if (me <= ms) {  // an empty match (none of our regexes makes one): step one character
                    at = ms + utf8_lead_len(subj[ms]);
                    if (at > sn) at = sn;
                    continue;
                }
                if (ms > last && (rc = span_push(&w->next, pc.off + (int64_t) last, (int64_t) (ms - last), -1)) < 0) return rc;
                if ((rc = span_push(&w->next, pc.off + (int64_t) ms, (int64_t) (me - ms), -1)) < 0) return rc;
                at = last = me;
            }
            if (last < sn && (rc = span_push(&w->next, pc.off + (int64_t) last, (int64_t) (sn - last), -1)) < 0) return rc;
        }
        struct span_vec tmp = w->pieces;
        w->pieces = w->next;
        w->next = tmp;
    }
    return 0;
}

// Byte-level encode one word (bytes -> the GPT-2 symbols, one per byte), merge by rank, emit.
static int bpe_encode_word(const struct llm_tokenizer * t, struct work * w, const char * word, size_t len, char * enc) {
    int rc;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = (uint8_t) word[i];
        memcpy(enc + n, t->byte_sym[c], t->byte_sym_len[c]);
        n += t->byte_sym_len[c];
    }
    if (t->ignore_merges) {
        int32_t id = vocab_find(t, enc, n);
        if (id >= 0) return ids_push(&w->out, id);
    }
    int32_t n_sym = 0;
    for (size_t off = 0, i = 0; i < len; i++) {
        int32_t k = t->byte_sym_len[(uint8_t) word[i]];
        w->sym.v[n_sym] = (struct symbol) { n_sym - 1, i + 1 == len ? -1 : n_sym + 1, (int32_t) off, k,
                                            t->byte_id[(uint8_t) word[i]] };
        n_sym++;
        off += (size_t) k;
    }
    if ((rc = merge_symbols(t, w, enc, n_sym)) < 0) return rc;
    for (int32_t i = 0; i != -1; i = w->sym.v[i].next) {
        const struct symbol * y = &w->sym.v[i];
        if (y->id >= 0) {
            if ((rc = ids_push(&w->out, y->id)) < 0) return rc;
            continue;
        }
        // Not a token (a vocabulary without every byte symbol): llama.cpp then looks up each
        // byte of the symbol's UTF-8 text as a one-byte token and drops those that are not.
        for (int32_t j = 0; j < y->n; j++) {
            int32_t b = vocab_find(t, enc + y->off + j, 1);
            if (b >= 0 && (rc = ids_push(&w->out, b)) < 0) return rc;
        }
    }
    return 0;
}

static int bpe_encode_fragment(const struct llm_tokenizer * t, struct work * w, const char * text, size_t len) {
    int rc;
    // Layout of w->buf: [sanitized text: 3 len][byte-level encoding of one word: 2 * 3 len].
    if ((rc = buf_reserve(w, 9 * len + 16)) < 0) return rc;
    size_t n = utf8_sanitize(text, len, w->buf);
    char * enc = w->buf + 3 * len;
    if ((rc = bpe_pretokenize(t, w, w->buf, n)) < 0) return rc;
    int64_t longest = 0;
    for (int64_t p = 0; p < w->pieces.n; p++) {
        if (w->pieces.v[p].len > longest) longest = w->pieces.v[p].len;
    }
    if ((rc = sym_reserve(&w->sym, longest)) < 0) return rc;
    for (int64_t p = 0; p < w->pieces.n; p++) {
        const struct span * pc = &w->pieces.v[p];
        if ((rc = bpe_encode_word(t, w, w->buf + pc->off, (size_t) pc->len, enc)) < 0) return rc;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Special tokens: split the text into raw fragments and special-token ids. Each special token in
// turn (longest text first) is searched in every raw fragment left by the previous ones.
// Without parse_special only USER_DEFINED tokens are split out (as llama.cpp does).

static int split_special(const struct llm_tokenizer * t, struct work * w, const char * text, size_t len, int parse_special) {
    int rc;
    w->pieces.n = 0;
    if (len > 0 && (rc = span_push(&w->pieces, 0, (int64_t) len, -1)) < 0) return rc;
    for (int64_t k = 0; k < t->n_special; k++) {
        int32_t id = t->special[k];
        if (!parse_special && t->type[id] != TT_USER_DEFINED) continue;
        const char * st = t->text[id];
        size_t sl = t->text_len[id];
        w->next.n = 0;
        for (int64_t p = 0; p < w->pieces.n; p++) {
            struct span pc = w->pieces.v[p];
            if (pc.tok >= 0 || (size_t) pc.len < sl) {
                if ((rc = span_push(&w->next, pc.off, pc.len, pc.tok)) < 0) return rc;
                continue;
            }
            int64_t at = pc.off, end = pc.off + pc.len;
            for (;;) {
                const char * hit = memmem(text + at, (size_t) (end - at), st, sl);
                if (!hit) break;
                int64_t h = hit - text;
                if (h > at && (rc = span_push(&w->next, at, h - at, -1)) < 0) return rc;
                if ((rc = span_push(&w->next, h, (int64_t) sl, id)) < 0) return rc;
                at = h + (int64_t) sl;
            }
            if (at < end && (rc = span_push(&w->next, at, end - at, -1)) < 0) return rc;
        }
        struct span_vec tmp = w->pieces;
        w->pieces = w->next;
        w->next = tmp;
    }
    return 0;
}

int llm_tokenizer_encode(const struct llm_tokenizer * t, const char * text, size_t len, int add_bos,
                         int parse_special, int32_t ** ids, int64_t * n) {
    struct work w = { 0 };
    struct span * frags = NULL;
    int rc = 0;
    *ids = NULL;
    *n = 0;
    if (!text && len > 0) return caldera_ctx_error(t->ctx, CALDERA_ERR_INVAL, "tokenizer: NULL text of %zu bytes", len);
    if (len > TOK_MAX_TEXT) {
        return caldera_ctx_error(t->ctx, CALDERA_ERR_RANGE, "tokenizer: text of %zu bytes; allowed at most %zu per call",
                                 len, TOK_MAX_TEXT);
    }
    if (add_bos) {
        if (t->bos < 0) {
            return caldera_ctx_error(t->ctx, CALDERA_ERR_UNSUPPORTED,
                                     "tokenizer: a BOS token was asked for, but the vocabulary has none");
        }
        if ((rc = ids_push(&w.out, t->bos)) < 0) goto nomem;
    }
    if ((rc = split_special(t, &w, text, len, parse_special)) < 0) goto fail;
    int64_t n_frag = w.pieces.n;
    if (n_frag > 0) {
        // The fragment list is reused by the pre-tokenizer: keep a copy.
        if (!(frags = caldera_malloc((size_t) n_frag * sizeof(*frags)))) goto nomem;
        memcpy(frags, w.pieces.v, (size_t) n_frag * sizeof(*frags));
    }
    if (t->fam == FAM_BPE && n_frag > 0) {
        if (!(w.md = pcre2_match_data_create(16, t->gctx))) goto nomem;
    }
    bool prev_special = true;  // SPM: a space before the first raw fragment and after specials
    for (int64_t f = 0; f < n_frag; f++) {
        const struct span * fr = &frags[f];
        if (fr->tok >= 0) {
            if ((rc = ids_push(&w.out, fr->tok)) < 0) goto nomem;
            prev_special = true;
            continue;
        }
        if (t->fam == FAM_SPM) {
            rc = spm_encode_fragment(t, &w, text + fr->off, (size_t) fr->len, t->add_space_prefix && prev_special);
        } else {
            rc = bpe_encode_fragment(t, &w, text + fr->off, (size_t) fr->len);
        }
        if (rc == CALDERA_ERR_NOMEM) goto nomem;
        if (rc < 0) goto fail;
        prev_special = false;
    }
    // The result is exactly sized (callers may keep it for long).
    int32_t * res = caldera_malloc((size_t) (w.out.n ? w.out.n : 1) * sizeof(*res));
    if (!res) goto nomem;
    if (w.out.n) memcpy(res, w.out.v, (size_t) w.out.n * sizeof(*res));
    *ids = res;
    *n = w.out.n;
    goto fail;
nomem:
    rc = caldera_ctx_error(t->ctx, CALDERA_ERR_NOMEM, "tokenizer: out of memory encoding %zu bytes", len);
fail:
    if (w.md) pcre2_match_data_free(w.md);
    caldera_free(frags);
    caldera_free(w.out.v);
    caldera_free(w.heap.v);
    caldera_free(w.sym.v);
    caldera_free(w.buf);
    caldera_free(w.pieces.v);
    caldera_free(w.next.v);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers (the regexes llama.cpp uses for each tokenizer.ggml.pre name). llama.cpp's \s
// is Unicode White_Space: \t-\r, U+0085 and the separators \p{Z}; written out here because
// PCRE2's \s leaves out U+0085.

#define WS "\\t-\\r\\x{85}\\p{Z}"
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])"
#define RE_CONTRACTIONS_CI "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RE_LLAMA3_TAIL "| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+"
#define RE_LLAMA3 RE_CONTRACTIONS_CI "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}" RE_LLAMA3_TAIL
#define RE_QWEN2  RE_CONTRACTIONS_CI "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}" RE_LLAMA3_TAIL

struct pre_def {
    const char * names[8];          // tokenizer.ggml.pre values (NULL-terminated)
    const char * regex[TOK_MAX_REGEX];
    int          ignore_merges;
    int          add_bos;           // default of add_bos_token
};

static const struct pre_def pre_defs[] = {
    { { "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva", NULL },
      { "\\p{N}", RE_GPT2 }, 0, 0 },
    { { "gpt-2", "gpt2", "phi-2", "mpt", "olmo", "roberta-bpe", "jina-v1-en", NULL }, { RE_GPT2 }, 0, 0 },
    { { "llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral", NULL }, { RE_LLAMA3 }, 1, 1 },
    { { "dbrx", "smaug-bpe", NULL }, { RE_LLAMA3 }, 0, 0 },
    { { "qwen2", "deepseek-r1-qwen", "stablelm2", NULL }, { RE_QWEN2 }, 0, 0 },
    { { "default", NULL }, { "[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]" }, 0, 0 },
};

// ---------------------------------------------------------------------------------------------
// Construction.

static void * pcre_alloc(size_t n, void * data) {
    (void) data;
    return caldera_malloc(n ? n : 1);
}

static void pcre_dealloc(void * p, void * data) {
    (void) data;
    caldera_free(p);
}

// Numeric array element i as int64 (any integer meta type); false for other types.
static bool meta_elem_int(enum caldera_meta_type et, const void * data, int64_t i, int64_t * v) {
    switch (et) {
    case CALDERA_META_U8:   *v = ((const uint8_t *) data)[i]; return true;
    case CALDERA_META_I8:   *v = ((const int8_t *) data)[i]; return true;
    case CALDERA_META_U16:  *v = ((const uint16_t *) data)[i]; return true;
    case CALDERA_META_I16:  *v = ((const int16_t *) data)[i]; return true;
    case CALDERA_META_U32:  *v = ((const uint32_t *) data)[i]; return true;
    case CALDERA_META_I32:  *v = ((const int32_t *) data)[i]; return true;
    case CALDERA_META_U64:  *v = (int64_t) ((const uint64_t *) data)[i]; return true;
    case CALDERA_META_I64:  *v = ((const int64_t *) data)[i]; return true;
    default: return false;
    }
}

static bool meta_elem_float(enum caldera_meta_type et, const void * data, int64_t i, double * v) {
    int64_t iv;
    if (et == CALDERA_META_F32) { *v = ((const float *) data)[i]; return true; }
    if (et == CALDERA_META_F64) { *v = ((const double *) data)[i]; return true; }
    if (meta_elem_int(et, data, i, &iv)) { *v = (double) iv; return true; }
    return false;
}

// A special token id from key, else @p def; ids outside the vocabulary are ignored (with a
// warning) as llama.cpp does.
static int32_t meta_token_id(struct caldera_ctx * ctx, const struct caldera_meta * meta, const char * key,
                             int32_t def, int64_t n_vocab) {
    int64_t v;
    if (def >= n_vocab) def = -1;
    if (caldera_meta_get_int(meta, key, &v) != 0) return def;
    if (v < 0 || v >= n_vocab) {
        caldera_log(ctx, CALDERA_LOG_WARN, "tokenizer: %s = %" PRId64 " is outside the vocabulary of %" PRId64 "; using %d",
                    key, v, n_vocab, (int) def);
        return def;
    }
    return (int32_t) v;
}

static int meta_bool(const struct caldera_meta * meta, const char * key, int def) {
    int64_t v;
    return caldera_meta_get_int(meta, key, &v) == 0 ? (v != 0) : def;
}

// GPT-2's byte-level alphabet: printable bytes stand for themselves, the others for code points
// 256, 257, ... in byte order.
static void init_byte_alphabet(struct llm_tokenizer * t) {
    int next = 256;
    for (int i = 0; i < 324; i++) t->sym_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
        uint32_t cp = printable ? (uint32_t) b : (uint32_t) next++;
        t->byte_sym_len[b] = (uint8_t) utf8_put(cp, t->byte_sym[b]);
        t->sym_byte[cp] = (int16_t) b;
    }
}

static int hex_val(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

// The decoded bytes of every token, into dst (NULL: only count). Returns the total size.
static size_t build_pieces(struct llm_tokenizer * t, char * dst) {
    size_t total = 0;
    for (int64_t i = 0; i < t->n_vocab; i++) {
        const char * s = t->text[i];
        size_t n = t->text_len[i], o = 0;
        char * d = dst ? dst + total : NULL;
        int ty = t->type[i];
        if (ty == TT_CONTROL || ty == TT_USER_DEFINED || ty == TT_UNKNOWN) {
            if (d) memcpy(d, s, n);
            o = n;
        } else if (ty == TT_BYTE && n == 6 && memcmp(s, "<0x", 3) == 0 && hex_val(s[3]) >= 0 && hex_val(s[4]) >= 0 &&
                   s[5] == '>') {
            if (d) d[0] = (char) (hex_val(s[3]) * 16 + hex_val(s[4]));
            o = 1;
        } else if (ty == TT_NORMAL || ty == TT_BYTE) {
            if (t->fam == FAM_SPM) {
                for (size_t j = 0; j < n;) {
                    if (n - j >= 3 && memcmp(s + j, "\xe2\x96\x81", 3) == 0) {
                        if (d) d[o] = ' ';
                        o++;
                        j += 3;
                    } else {
                        if (d) d[o] = s[j];
                        o++;
                        j++;
                    }
                }
            } else {
                // Each code point of the byte-level text back to its byte; a code point outside the
                // alphabet is kept as its UTF-8 bytes.
                for (size_t j = 0; j < n;) {
                    size_t k = utf8_lead_len((uint8_t) s[j]);
                    if (k > n - j) k = n - j;
                    uint32_t cp = (uint8_t) s[j];
                    if (k == 2 && ((uint8_t) s[j + 1] & 0xc0) == 0x80) cp = ((cp & 0x1f) << 6) | ((uint8_t) s[j + 1] & 0x3f);
                    else if (k != 1) cp = 0xffffffffu;
                    if (cp < 324 && t->sym_byte[cp] >= 0) {
                        if (d) d[o] = (char) t->sym_byte[cp];
                        o++;
                    } else {
                        if (d) memcpy(d + o, s + j, k);
                        o += k;
                    }
                    j += k;
                }
            }
        }
        // UNUSED / UNDEFINED tokens decode to nothing (llama.cpp suppresses them)
        if (dst) {
            t->piece[i] = d;
            t->piece_len[i] = o;
        }
        total += o;
    }
    return total;
}

// Texts llama.cpp recognises as the end-of-turn token when tokenizer.ggml.eot_token_id is absent
// (its list, in this order of preference).
static const char * const eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>",
    "<end_of_utterance>", NULL,
};

static int special_cmp_len_desc(const struct llm_tokenizer * t, int32_t a, int32_t b) {
    if (t->text_len[a] != t->text_len[b]) return t->text_len[a] > t->text_len[b] ? -1 : 1;
    return a < b ? -1 : a > b;
}

int llm_tokenizer_init(struct caldera_ctx * ctx, const struct caldera_meta * meta, struct llm_tokenizer ** out) {
    struct llm_tokenizer * t = NULL;
    pcre2_compile_context * cctx = NULL;
    char * cat = NULL;
    int rc = 0;
    *out = NULL;
    const char * model = NULL;
    if (caldera_meta_get_string(meta, "tokenizer.ggml.model", &model) != 0) {
        return caldera_ctx_error(ctx, CALDERA_ERR_NOT_FOUND, "tokenizer: the model has no tokenizer (no tokenizer.ggml.model key)");
    }
    enum tok_family fam;
    if (strcmp(model, "llama") == 0) fam = FAM_SPM;
    else if (strcmp(model, "gpt2") == 0) fam = FAM_BPE;
    else {
        return caldera_ctx_error(ctx, CALDERA_ERR_UNSUPPORTED,
                                 "tokenizer: tokenizer.ggml.model '%s' is not supported; allowed: llama (SentencePiece), gpt2 (byte-level BPE)",
                                 model);
    }
    int64_t n_vocab = 0;
    const char * const * toks = NULL;
    const size_t * tok_lens = NULL;
    if (caldera_meta_get_string_array_n(meta, "tokenizer.ggml.tokens", &n_vocab, &toks, &tok_lens) != 0) {
        return caldera_ctx_error(ctx, CALDERA_ERR_NOT_FOUND, "tokenizer: tokenizer.ggml.tokens (a string array) is missing");
    }
    if (n_vocab <= 0 || n_vocab > INT32_MAX / 2) {
        return caldera_ctx_error(ctx, CALDERA_ERR_FORMAT, "tokenizer: tokenizer.ggml.tokens has %" PRId64 " entries; allowed 1..%d",
                                 n_vocab, INT32_MAX / 2);
    }
    // optional per-token arrays: lengths must cover the vocabulary
    enum caldera_meta_type sc_t = CALDERA_META_F32, ty_t = CALDERA_META_I32;
    int64_t n_sc = 0, n_ty = 0;
    const void * sc = NULL, * ty = NULL;
    if (caldera_meta_find(meta, "tokenizer.ggml.scores") >= 0) {
        if (caldera_meta_get_array(meta, "tokenizer.ggml.scores", &sc_t, &n_sc, &sc) != 0 || n_sc < n_vocab ||
            (n_sc > 0 && !meta_elem_float(sc_t, sc, 0, &(double) { 0 }))) {
            return caldera_ctx_error(ctx, CALDERA_ERR_FORMAT,
                                     "tokenizer: tokenizer.ggml.scores must be a numeric array of at least %" PRId64 " values (has %" PRId64 ")",
                                     n_vocab, n_sc);
        }
    }
    if (caldera_meta_find(meta, "tokenizer.ggml.token_type") >= 0) {
        if (caldera_meta_get_array(meta, "tokenizer.ggml.token_type", &ty_t, &n_ty, &ty) != 0 || n_ty < n_vocab ||
            (n_ty > 0 && !meta_elem_int(ty_t, ty, 0, &(int64_t) { 0 }))) {
            return caldera_ctx_error(ctx, CALDERA_ERR_FORMAT,
                                     "tokenizer: tokenizer.ggml.token_type must be an integer array of at least %" PRId64 " values (has %" PRId64 ")",
                                     n_vocab, n_ty);
        }
    }
    int64_t n_merges = 0;
    const char * const * merges = NULL;
    const size_t * merge_lens = NULL;
    const struct pre_def * pre = NULL;
    const char * pre_name = "";
    if (fam == FAM_BPE) {
        if (caldera_meta_get_string_array_n(meta, "tokenizer.ggml.merges", &n_merges, &merges, &merge_lens) != 0) {
            return caldera_ctx_error(ctx, CALDERA_ERR_NOT_FOUND, "tokenizer: a gpt2 tokenizer needs tokenizer.ggml.merges (a string array)");
        }
        if (n_merges > (1 << 24)) {  // ranks are queue priorities in a float
            return caldera_ctx_error(ctx, CALDERA_ERR_FORMAT, "tokenizer: %" PRId64 " merges; allowed at most %d", n_merges, 1 << 24);
        }
        if (caldera_meta_get_string(meta, "tokenizer.ggml.pre", &pre_name) != 0 || !pre_name[0]) {
            caldera_log(ctx, CALDERA_LOG_WARN, "tokenizer: no tokenizer.ggml.pre; using the 'default' pre-tokenizer (as llama.cpp)");
            pre_name = "default";
        }
        for (size_t d = 0; !pre && d < sizeof(pre_defs) / sizeof(pre_defs[0]); d++) {
            for (int k = 0; pre_defs[d].names[k]; k++) {
                if (strcmp(pre_defs[d].names[k], pre_name) == 0) pre = &pre_defs[d];
            }
        }
        if (!pre) {
            return caldera_ctx_error(ctx, CALDERA_ERR_UNSUPPORTED,
                                     "tokenizer: pre-tokenizer '%s' (tokenizer.ggml.pre) is not supported; allowed: smollm, starcoder, "
                                     "gpt-2, llama-bpe, llama3, qwen2, dbrx, default and their aliases (see models/llama/TOKENIZER.md)",
                                     pre_name);
        }
    }

    if (!(t = caldera_calloc(1, sizeof(*t)))) goto nomem;
    t->ctx = ctx;
    t->fam = fam;
    t->n_vocab = n_vocab;
    t->n_merges = n_merges;
    snprintf(t->pre_name, sizeof(t->pre_name), "%s", fam == FAM_SPM ? "spm" : pre_name);
    size_t arena = 0;
    for (int64_t i = 0; i < n_vocab; i++) arena += tok_lens[i];
    for (int64_t i = 0; i < n_merges; i++) arena += merge_lens[i];
    size_t nv = (size_t) n_vocab;
    if (!(t->text = caldera_malloc(nv * sizeof(*t->text))) || !(t->text_len = caldera_malloc(nv * sizeof(*t->text_len))) ||
        !(t->score = caldera_malloc(nv * sizeof(*t->score))) || !(t->type = caldera_malloc(nv * sizeof(*t->type))) ||
        !(t->piece = caldera_malloc(nv * sizeof(*t->piece))) || !(t->piece_len = caldera_malloc(nv * sizeof(*t->piece_len)))) {
        goto nomem;
    }
    // Token texts and merges live in the arena (the metadata may be freed before the tokenizer).
    if (!(t->arena = caldera_malloc(arena + 1))) goto nomem;
    size_t at = 0;
    for (int64_t i = 0; i < n_vocab; i++) {
        memcpy(t->arena + at, toks[i], tok_lens[i]);
        t->text[i] = t->arena + at;
        t->text_len[i] = tok_lens[i];
        at += tok_lens[i];
        double s = 0;
        int64_t y = TT_NORMAL;
        if (sc) meta_elem_float(sc_t, sc, i, &s);
        if (ty) meta_elem_int(ty_t, ty, i, &y);
        t->score[i] = (float) s;
        t->type[i] = (y >= TT_UNDEFINED && y <= TT_BYTE) ? (int32_t) y : TT_UNDEFINED;
    }
    if (strmap_init(&t->vocab, n_vocab) < 0) goto nomem;
    for (int64_t i = 0; i < n_vocab; i++) {
        if (t->text_len[i] == 0) {
            rc = caldera_ctx_error(ctx, CALDERA_ERR_FORMAT, "tokenizer: token %" PRId64 " of tokenizer.ggml.tokens is empty", i);
            goto fail;
        }
        int32_t dup = vocab_insert(t, (int32_t) i);
        if (dup >= 0) {
            rc = caldera_ctx_error(ctx, CALDERA_ERR_FORMAT,
                                   "tokenizer: tokens %d and %" PRId64 " of tokenizer.ggml.tokens have the same text; each text must be unique",
                                   dup, i);
            goto fail;
        }
    }
    if (fam == FAM_BPE) {
        size_t nm = (size_t) (n_merges ? n_merges : 1);
        if (!(t->m_first = caldera_malloc(nm * sizeof(*t->m_first))) || !(t->m_first_len = caldera_malloc(nm * sizeof(size_t))) ||
            !(t->m_second = caldera_malloc(nm * sizeof(*t->m_second))) || !(t->m_second_len = caldera_malloc(nm * sizeof(size_t))) ||
            strmap_init(&t->merges, n_merges) < 0) {
            goto nomem;
        }
        for (int64_t i = 0; i < n_merges; i++) {
            char * m = t->arena + at;
            size_t ml = merge_lens[i];
            memcpy(m, merges[i], ml);
            at += ml;
            // "first second", split at the first space after the first byte (a first part may be a
            // lone space in other vocabularies); a merge without one never applies.
            const char * sp = ml > 1 ? memchr(m + 1, ' ', ml - 1) : NULL;
            if (!sp) {
                t->m_first[i] = t->m_second[i] = m;
                t->m_first_len[i] = t->m_second_len[i] = 0;
                continue;
            }
            t->m_first[i] = m;
            t->m_first_len[i] = (size_t) (sp - m);
            t->m_second[i] = sp + 1;
            t->m_second_len[i] = ml - (size_t) (sp - m) - 1;
            merge_insert(t, (int32_t) i);
        }
        // The same merges keyed by the token ids of both sides (the merge loop's fast path).
        size_t longest = 0;
        for (int64_t i = 0; i < n_merges; i++) longest = merge_lens[i] > longest ? merge_lens[i] : longest;
        if (pairmap_init(&t->pairs, n_merges) < 0 || !(cat = caldera_malloc(longest + 1))) goto nomem;
        for (int64_t i = 0; i < n_merges; i++) {
            if (t->m_first_len[i] == 0) continue;
            int32_t a = vocab_find(t, t->m_first[i], t->m_first_len[i]);
            int32_t b = vocab_find(t, t->m_second[i], t->m_second_len[i]);
            if (a < 0 || b < 0) continue;
            memcpy(cat, t->m_first[i], t->m_first_len[i]);
            memcpy(cat + t->m_first_len[i], t->m_second[i], t->m_second_len[i]);
            pair_insert(&t->pairs, a, b, (int32_t) i, vocab_find(t, cat, t->m_first_len[i] + t->m_second_len[i]));
        }
    }

    if (fam == FAM_SPM) {
        // Every split of a token into two tokens: (left id, right id) -> the token (the merge
        // loop's fast path; a symbol that is not a token takes the text lookup).
        int64_t n_pairs = 0;
        for (int pass = 0; pass < 2; pass++) {
            if (pass == 1 && pairmap_init(&t->pairs, n_pairs) < 0) goto nomem;
            for (int64_t i = 0; i < n_vocab; i++) {
                for (size_t k = 1; k < t->text_len[i]; k++) {
                    int32_t a = vocab_find(t, t->text[i], k);
                    int32_t b = a >= 0 ? vocab_find(t, t->text[i] + k, t->text_len[i] - k) : -1;
                    if (b < 0) continue;
                    if (pass == 0) n_pairs++;
                    else pair_insert(&t->pairs, a, b, 0, (int32_t) i);
                }
            }
        }
    }

    // Special ids, flags (llama.cpp's defaults per family, then the keys).
    int32_t def_bos = fam == FAM_SPM ? 1 : 11, def_eos = fam == FAM_SPM ? 2 : 11, def_unk = fam == FAM_SPM ? 0 : -1;
    t->bos = meta_token_id(ctx, meta, "tokenizer.ggml.bos_token_id", def_bos, n_vocab);
    t->eos = meta_token_id(ctx, meta, "tokenizer.ggml.eos_token_id", def_eos, n_vocab);
    t->unk = meta_token_id(ctx, meta, "tokenizer.ggml.unknown_token_id", def_unk, n_vocab);
    t->eot = meta_token_id(ctx, meta, "tokenizer.ggml.eot_token_id", -1, n_vocab);
    if (t->eot < 0) {
        for (int k = 0; eot_texts[k] && t->eot < 0; k++) t->eot = vocab_find(t, eot_texts[k], strlen(eot_texts[k]));
        if (t->eot >= 0 && t->type[t->eot] != TT_CONTROL) t->type[t->eot] = TT_CONTROL;  // as llama.cpp overrides it
    }
    if (t->eot < 0) t->eot = t->eos;
    t->add_bos = meta_bool(meta, "tokenizer.ggml.add_bos_token", fam == FAM_SPM ? 1 : pre->add_bos);
    t->add_space_prefix = meta_bool(meta, "tokenizer.ggml.add_space_prefix", fam == FAM_SPM);
    t->ignore_merges = fam == FAM_BPE && pre->ignore_merges;

    // Special tokens, longest first (ties by id, so the order is deterministic).
    for (int64_t i = 0; i < n_vocab; i++) {
        int y = t->type[i];
        if (y == TT_CONTROL || y == TT_USER_DEFINED || y == TT_UNKNOWN) t->n_special++;
    }
    if (!(t->special = caldera_malloc((size_t) (t->n_special ? t->n_special : 1) * sizeof(*t->special)))) goto nomem;
    t->n_special = 0;
    for (int64_t i = 0; i < n_vocab; i++) {
        int y = t->type[i];
        if (y != TT_CONTROL && y != TT_USER_DEFINED && y != TT_UNKNOWN) continue;
        int64_t j = t->n_special++;  // insertion sort: special tokens are few
        while (j > 0 && special_cmp_len_desc(t, (int32_t) i, t->special[j - 1]) < 0) {
            t->special[j] = t->special[j - 1];
            j--;
        }
        t->special[j] = (int32_t) i;
    }

    init_byte_alphabet(t);
    for (int b = 0; b < 256; b++) t->byte_id[b] = vocab_find(t, t->byte_sym[b], t->byte_sym_len[b]);
    size_t pieces = build_pieces(t, NULL);
    char * pbuf = caldera_malloc(pieces + 1);
    if (!pbuf) goto nomem;
    build_pieces(t, pbuf);
    t->piece_base = pbuf;

    if (fam == FAM_BPE) {
        if (!(t->gctx = pcre2_general_context_create(pcre_alloc, pcre_dealloc, NULL))) goto nomem;
        if (!(cctx = pcre2_compile_context_create(t->gctx))) goto nomem;
        for (int r = 0; r < TOK_MAX_REGEX && pre->regex[r]; r++) {
            int err = 0;
            PCRE2_SIZE eoff = 0;
            t->re[r] = pcre2_compile((PCRE2_SPTR) pre->regex[r], PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &eoff, cctx);
            if (!t->re[r]) {
                PCRE2_UCHAR msg[160];
                pcre2_get_error_message(err, msg, sizeof(msg));
                if (err == PCRE2_ERROR_HEAP_FAILED) goto nomem;
                rc = caldera_ctx_error(ctx, CALDERA_ERR_BUG,
                                       "tokenizer: pre-tokenizer '%s' regex %d does not compile at offset %zu: %s", pre_name, r + 1,
                                       (size_t) eoff, (const char *) msg);
                goto fail;
            }
            t->n_regex = r + 1;
            // JIT where the library has it; the interpreter otherwise (same results).
            (void) pcre2_jit_compile(t->re[r], PCRE2_JIT_COMPLETE);
        }
    }
    pcre2_compile_context_free(cctx);
    caldera_free(cat);
    *out = t;
    return 0;
nomem:
    rc = caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "tokenizer: out of memory building a vocabulary of %" PRId64 " tokens", n_vocab);
fail:
    pcre2_compile_context_free(cctx);
    caldera_free(cat);
    llm_tokenizer_free(t);
    return rc;
}

void llm_tokenizer_free(struct llm_tokenizer * t) {
    if (!t) return;
    for (int r = 0; r < TOK_MAX_REGEX; r++) pcre2_code_free(t->re[r]);
    pcre2_general_context_free(t->gctx);
    strmap_free(&t->vocab);
    strmap_free(&t->merges);
    pairmap_free(&t->pairs);
    caldera_free(t->special);
    caldera_free(t->m_first);
    caldera_free(t->m_first_len);
    caldera_free(t->m_second);
    caldera_free(t->m_second_len);
    caldera_free(t->piece_base);
    caldera_free(t->piece);
    caldera_free(t->piece_len);
    caldera_free(t->type);
    caldera_free(t->score);
    caldera_free(t->text_len);
    caldera_free(t->text);
    caldera_free(t->arena);
    caldera_free(t);
}

int64_t llm_tokenizer_n_vocab(const struct llm_tokenizer * t) { return t->n_vocab; }
int32_t llm_tokenizer_bos(const struct llm_tokenizer * t) { return t->bos; }
int32_t llm_tokenizer_eos(const struct llm_tokenizer * t) { return t->eos; }
int32_t llm_tokenizer_eot(const struct llm_tokenizer * t) { return t->eot; }
int     llm_tokenizer_add_bos(const struct llm_tokenizer * t) { return t->add_bos && t->bos >= 0; }

int llm_tokenizer_is_control(const struct llm_tokenizer * t, int32_t id) {
    return id >= 0 && id < t->n_vocab && t->type[id] == TT_CONTROL;
}

int llm_tokenizer_piece(const struct llm_tokenizer * t, int32_t id, const char ** piece, size_t * len) {
    if (id < 0 || id >= t->n_vocab) {
        *piece = "";
        *len = 0;
        return caldera_ctx_error(t->ctx, CALDERA_ERR_RANGE, "tokenizer: token id %d outside the vocabulary [0, %" PRId64 ")",
                                 (int) id, t->n_vocab);
    }
    *piece = t->piece[id];
    *len = t->piece_len[id];
    return 0;
}
