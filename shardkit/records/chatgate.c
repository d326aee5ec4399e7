/*
 * shardkit.records.chatgate: the record gates over raw JSONL bytes, in one C pass (chat and
 * ShareGPT first, hence the name; alpaca, prompt-completion and text too).
 *
 * scan(data, max_line, resolve, kinds) -> (clean, lines, events)
 *
 * For every line of `data` (each ending in b"\n"; bytes after the last newline are
 * ignored) it decides, without building a Python object, whether the line is certainly
 * a clean record of the kinds asked for (a mask of CHAT, SHAREGPT, ALPACA, PROMPT_COMPLETION,
 * TEXT; ALL of them for --kind auto): valid
 * JSON (as orjson reads it), top-level keys unique and with no escapes, and
 *   - chat: a non-empty `messages` array whose every message passes the same test as
 *     validate.py's `_gate_chat_messages` (role user/assistant, system first only; content
 *     a non-blank string with no "{{" and no "<image>", or a non-empty list of text parts;
 *     extra keys only name (string), weight and loss_weight (numbers)), with at least one
 *     assistant turn;
 *   - ShareGPT: `_gate_sharegpt`'s test: turns of exactly {from: human|gpt, value: such a
 *     text}, at least one gpt turn; `system` a string with no placeholder, `tools` a string
 *     or a list;
 *   - alpaca: `instruction` and `output` fine texts (not blank, no "{{", no "<image>"),
 *     `input` a string with no placeholder (blank is fine);
 *   - prompt-completion: `prompt` and `completion` fine texts; text: `text` a fine text.
 * A key of a kind asked for must pass its test; other keys need only be valid JSON. Which
 * keys a clean record may have, and which it must, is resolve's business (by the shape).
 *
 * This is a strict gate: anything it is not sure of (an escape that decodes to '{' or
 * '<', a \u escape right after '{' or within "<image>", an exponent, a number of 19
 * digits or more, nesting deeper than 64, more than 16 top-level keys...) is "slow" and
 * goes to the Python path, which is the source of truth.
 * It never calls a line clean that the Python gate would not call clean
 * (tests/test_chatgate.py checks this, line by line, on generated and hostile inputs).
 *
 * A line that passes is reported by the tuple of its top-level keys (its "shape"):
 * `resolve(keys)` is called once per new shape and returns 0 (clean: counted here),
 * a positive code (returned in an event), or -1 (slow). Events, in line order, are
 * (line index, start, end, code): code -1 for a slow line, else resolve's code; start
 * and end are the line's bytes [start, end), newline included. `data` must not change
 * during the call (check_lines passes bytes).
 *
 * The scan runs without the GIL (it takes it back only to call resolve), so threads can
 * scan blocks in parallel: split --validate checks its blocks on threads, not processes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_DEPTH 64
#define MAX_KEYS 16
#define MAX_SHAPES 64
#define MAX_SIG 1024
#define MAX_INT_DIGITS 18
#define MAX_FRAC_DIGITS 40

typedef const unsigned char *ptr;

typedef struct {
    ptr p;
    ptr end;
} Cur;

/* bytes that stop a run inside a string: '"', '\\', controls, non-ASCII (plain); and
   also '{' and '<' inside message text (content), where placeholders are looked for */
static unsigned char plain_stop[256];
static unsigned char content_stop[256];

#define STR_ESC 1     /* the string has an escape */
#define STR_VISIBLE 2 /* the decoded string has a character that is not whitespace */

/* str.isspace() for one code point (Python 3.11's definition: bidi WS, B, S or Zs);
   tests/test_chatgate.py compares it with str.isspace over every code point */
static int is_space_cp(unsigned int c)
{
    if (c < 0x80)
        return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20);
    return c == 0x85 || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) ||
           c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

/* one UTF-8 sequence starting at a byte >= 0x80: its length (2-4) and code point, or 0
   when it is not valid UTF-8 (overlong, a surrogate, beyond U+10FFFF, cut short) */
static int utf8_seq(ptr p, ptr end, unsigned int *cp)
{
    unsigned int c = p[0], v;
    if (c >= 0xC2 && c <= 0xDF) {
        if (end - p < 2 || (p[1] & 0xC0) != 0x80)
            return 0;
        *cp = ((c & 0x1F) << 6) | (p[1] & 0x3F);
        return 2;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (end - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
            return 0;
        v = ((c & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
        if (v < 0x800 || (v >= 0xD800 && v <= 0xDFFF))
            return 0;
        *cp = v;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (end - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        v = ((c & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
        if (v < 0x10000 || v > 0x10FFFF)
            return 0;
        *cp = v;
        return 4;
    }
    return 0;
}

static int hex4(ptr p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned int c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return -1;
    }
    return v;
}

static inline void skip_ws(Cur *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\r' || *c->p == '\n'))
        c->p++;
}

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* past the bytes that need no attention inside a string (16 at a time with SSE2) */
static inline ptr skip_run(ptr p, ptr end, const unsigned char *stop, int content)
{
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    const __m128i brace = _mm_set1_epi8('{'), angle = _mm_set1_epi8('<');
    const __m128i space = _mm_set1_epi8(0x20);
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        /* signed: below 0x20 is a control byte, negative is a non-ASCII one */
        __m128i m = _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash));
        m = _mm_or_si128(m, _mm_cmplt_epi8(x, space));
        if (content)
            m = _mm_or_si128(m, _mm_or_si128(_mm_cmpeq_epi8(x, brace), _mm_cmpeq_epi8(x, angle)));
        int bits = _mm_movemask_epi8(m);
        if (bits)
            return p + __builtin_ctz((unsigned int)bits);
        p += 16;
    }
#endif
    while (p < end && !stop[*p])
        p++;
    return p;
}

/* A string at c->p (its opening quote). With `content`, also tracks whether it has a
   visible character and fails on a possible placeholder ("{{", "<image>"). Returns the
   STR_ flags, or -1 (slow); [*s, *e) is the raw body between the quotes. */
static int scan_string(Cur *c, int content, ptr *s, ptr *e)
{
    ptr p = c->p + 1, end = c->end;
    const unsigned char *stop = content ? content_stop : plain_stop;
    int flags = 0;
    unsigned int cp;
    *s = p;
    for (;;) {
        if (!content || (flags & STR_VISIBLE)) {
            p = skip_run(p, end, stop, content);
        } else {
            while (p < end && !stop[*p]) {
                if (*p != ' ')
                    flags |= STR_VISIBLE;
                p++;
            }
        }
        if (p >= end)
            return -1;
        unsigned int ch = *p;
        if (ch == '"') {
            *e = p;
            c->p = p + 1;
            return flags;
        }
        if (ch == '\\') {
            flags |= STR_ESC;
            if (end - p < 2)
                return -1;
            switch (p[1]) {
            case '"': case '\\': case '/':
                cp = p[1]; p += 2; break;
            case 'b': cp = 0x08; p += 2; break;
            case 'f': cp = 0x0c; p += 2; break;
            case 'n': cp = 0x0a; p += 2; break;
            case 'r': cp = 0x0d; p += 2; break;
            case 't': cp = 0x09; p += 2; break;
            case 'u': {
                if (end - p < 6)
                    return -1;
                int v = hex4(p + 2);
                if (v < 0)
                    return -1;
                p += 6;
                if (v >= 0xD800 && v <= 0xDBFF) {
                    if (end - p < 6 || p[0] != '\\' || p[1] != 'u')
                        return -1;
                    int w = hex4(p + 2);
                    if (w < 0xDC00 || w > 0xDFFF)
                        return -1;
                    p += 6;
                    v = 0x10000 + ((v - 0xD800) << 10) + (w - 0xDC00);
                } else if (v >= 0xDC00 && v <= 0xDFFF) {
                    return -1;
                }
                cp = (unsigned int)v;
                break;
            }
            default:
                return -1;
            }
            if (content) {
                if (cp == '{' || cp == '<')
                    return -1; /* a placeholder could be spelled with escapes: Python decides */
                if (!is_space_cp(cp))
                    flags |= STR_VISIBLE;
            }
            continue;
        }
        if (ch < 0x20)
            return -1;
        if (ch >= 0x80) {
            int n = utf8_seq(p, end, &cp);
            if (!n)
                return -1;
            if (content && !is_space_cp(cp))
                flags |= STR_VISIBLE;
            p += n;
            continue;
        }
        if (ch == '{') { /* content only: "{{", or '{' then a \u escape, is Python's to judge */
            if (end - p >= 2 && (p[1] == '{' || (p[1] == '\\' && end - p >= 3 && p[2] == 'u')))
                return -1;
            flags |= STR_VISIBLE;
            p++;
            continue;
        }
        if (ch == '<') { /* content only: "<image>", or a \u escape within it */
            static const char pat[] = "image>";
            int i = 0;
            for (; i < 6 && p + 1 + i < end; i++) {
                if (p[1 + i] == '\\' && p + 2 + i < end && p[2 + i] == 'u')
                    return -1; /* \n, \" and the like never spell a letter of "image>" */
                if (p[1 + i] != (unsigned char)pat[i])
                    break;
            }
            if (i == 6)
                return -1;
            flags |= STR_VISIBLE;
            p++;
            continue;
        }
        return -1;
    }
}

static int skip_number(Cur *c)
{
    ptr p = c->p, end = c->end, s;
    if (p < end && *p == '-')
        p++;
    if (p >= end)
        return -1;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        s = p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p - s > MAX_INT_DIGITS)
            return -1;
    } else {
        return -1;
    }
    if (p < end && *p == '.') {
        s = ++p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p == s || p - s > MAX_FRAC_DIGITS)
            return -1;
    }
    if (p < end && (*p == 'e' || *p == 'E'))
        return -1; /* an exponent can overflow to infinity, which orjson rejects */
    c->p = p;
    return 0;
}

static int skip_literal(Cur *c, const char *word, size_t n)
{
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0)
        return -1;
    c->p += n;
    return 0;
}

/* expect ':' between a key and its value */
static int colon(Cur *c)
{
    skip_ws(c);
    if (c->p >= c->end || *c->p != ':')
        return -1;
    c->p++;
    skip_ws(c);
    return 0;
}

/* after a member: 1 for ',' (more follow), 0 for the closing bracket, -1 otherwise */
static int next_member(Cur *c, unsigned char close)
{
    skip_ws(c);
    if (c->p >= c->end)
        return -1;
    if (*c->p == ',') {
        c->p++;
        skip_ws(c);
        return 1;
    }
    if (*c->p == close) {
        c->p++;
        return 0;
    }
    return -1;
}

/* step inside an object or array: its opening bracket, then whitespace */
static int enter(Cur *c, unsigned char open)
{
    if (c->p >= c->end || *c->p != open)
        return -1;
    c->p++;
    skip_ws(c);
    return 0;
}

/* a string with no escape (a key, a role, a part type): its body in [*s, *e) */
static int plain_string(Cur *c, ptr *s, ptr *e)
{
    return (c->p < c->end && *c->p == '"' && scan_string(c, 0, s, e) == 0) ? 0 : -1;
}

/* a key with no escape, and the colon after it */
static int plain_key(Cur *c, ptr *s, ptr *e)
{
    return (plain_string(c, s, e) == 0 && colon(c) == 0) ? 0 : -1;
}

/* after an object member's value: mark its key (a repeated key is -1: orjson would keep
   the last value, Python decides), then next_member */
static int end_member(Cur *c, unsigned int *seen, unsigned int bit)
{
    if (*seen & bit)
        return -1;
    *seen |= bit;
    return next_member(c, '}');
}

static int skip_value(Cur *c, int depth)
{
    ptr s, e;
    int more;
    if (c->p >= c->end)
        return -1;
    switch (*c->p) {
    case '"':
        return scan_string(c, 0, &s, &e) < 0 ? -1 : 0;
    case '{':
    case '[': {
        unsigned char close = *c->p == '{' ? '}' : ']';
        if (depth >= MAX_DEPTH)
            return -1;
        c->p++;
        skip_ws(c);
        if (c->p < c->end && *c->p == close) {
            c->p++;
            return 0;
        }
        do {
            if (close == '}' && (c->p >= c->end || *c->p != '"' || scan_string(c, 0, &s, &e) < 0 || colon(c) < 0))  /* escapes allowed */
                return -1;
            if (skip_value(c, depth + 1) < 0)
                return -1;
        } while ((more = next_member(c, close)) > 0);
        return more;
    }
    case 't':
        return skip_literal(c, "true", 4);
    case 'f':
        return skip_literal(c, "false", 5);
    case 'n':
        return skip_literal(c, "null", 4);
    default:
        return skip_number(c);
    }
}

#define KEY_IS(s, e, lit) ((size_t)((e) - (s)) == sizeof(lit) - 1 && memcmp((s), (lit), sizeof(lit) - 1) == 0)

/* a fine text: a string, not blank, with no placeholder */
static int fine_text(Cur *c)
{
    ptr s, e;
    if (c->p >= c->end || *c->p != '"')
        return -1;
    int f = scan_string(c, 1, &s, &e);
    return (f >= 0 && (f & STR_VISIBLE)) ? 0 : -1;
}

/* the members of an object whose keys have no escape: `member` reads each value and
   returns its key's bit (-1: not a key it takes, or a bad value); a repeated key is -1.
   Returns the bits of the keys seen, or -1. */
typedef int (*MemberFn)(Cur *c, ptr key, ptr key_end, void *state);

static int each_member(Cur *c, MemberFn member, void *state)
{
    ptr s, e;
    unsigned int seen = 0;
    if (enter(c, '{') < 0)
        return -1;
    for (;;) {
        int bit = plain_key(c, &s, &e) < 0 ? -1 : member(c, s, e, state);
        int more = bit < 0 ? -1 : end_member(c, &seen, (unsigned int)bit);
        if (more <= 0)
            return more < 0 ? -1 : (int)seen;
    }
}

/* a text part: {"type": "text", "text": fine text}, nothing else */
static int part_member(Cur *c, ptr s, ptr e, void *state)
{
    ptr vs, ve;
    (void)state;
    if (KEY_IS(s, e, "type"))
        return (plain_string(c, &vs, &ve) == 0 && KEY_IS(vs, ve, "text")) ? 1 : -1;
    if (KEY_IS(s, e, "text"))
        return fine_text(c) == 0 ? 2 : -1;
    return -1;
}

static int check_part(Cur *c)
{
    return each_member(c, part_member, NULL) == 3 ? 0 : -1;
}

static int check_content(Cur *c)
{
    if (c->p >= c->end)
        return -1;
    if (*c->p == '"')
        return fine_text(c);
    if (enter(c, '[') < 0)
        return -1;
    if (c->p < c->end && *c->p == ']')
        return -1; /* no parts */
    for (;;) {
        if (check_part(c) < 0)
            return -1;
        int more = next_member(c, ']');
        if (more < 0)
            return -1;
        if (!more)
            return 0;
    }
}

static int number_value(Cur *c)
{
    if (c->p >= c->end || !(*c->p == '-' || (*c->p >= '0' && *c->p <= '9')))
        return -1;
    return skip_number(c);
}

#define ROLE_USER 1
#define ROLE_ASSISTANT 2
#define ROLE_SYSTEM 3

/* a message: role and content, maybe name (a string), weight and loss_weight (numbers) */
static int message_member(Cur *c, ptr s, ptr e, void *state)
{
    ptr vs, ve;
    int *role = state;
    if (KEY_IS(s, e, "role")) {
        if (plain_string(c, &vs, &ve) < 0)
            return -1;
        *role = KEY_IS(vs, ve, "user") ? ROLE_USER
              : KEY_IS(vs, ve, "assistant") ? ROLE_ASSISTANT
              : KEY_IS(vs, ve, "system") ? ROLE_SYSTEM : 0;
        return *role ? 1 : -1;
    }
    if (KEY_IS(s, e, "content"))
        return check_content(c) == 0 ? 2 : -1;
    if (KEY_IS(s, e, "name")) /* any string, escapes too */
        return (c->p < c->end && *c->p == '"' && scan_string(c, 0, &vs, &ve) >= 0) ? 4 : -1;
    if (KEY_IS(s, e, "weight"))
        return number_value(c) == 0 ? 8 : -1;
    if (KEY_IS(s, e, "loss_weight"))
        return number_value(c) == 0 ? 16 : -1;
    return -1;
}

/* one message: returns its role, or -1 */
static int check_message(Cur *c)
{
    int role = 0;
    int seen = each_member(c, message_member, &role);
    return (seen >= 0 && (seen & 3) == 3) ? role : -1;
}

static int check_messages(Cur *c)
{
    int has_assistant = 0;
    if (enter(c, '[') < 0)
        return -1;
    for (Py_ssize_t i = 0;; i++) {
        int role = check_message(c);
        if (role < 0 || (role == ROLE_SYSTEM && i != 0))
            return -1;
        if (role == ROLE_ASSISTANT)
            has_assistant = 1;
        int more = next_member(c, ']');
        if (more < 0)
            return -1;
        if (!more)
            break;
    }
    return has_assistant ? 0 : -1;
}

/* a ShareGPT turn: {"from": "human" | "gpt", "value": fine text}, nothing else (system
   turns and tool traffic are Python's to judge) */
static int turn_member(Cur *c, ptr s, ptr e, void *state)
{
    ptr vs, ve;
    int *gpt = state;
    if (KEY_IS(s, e, "from")) {
        if (plain_string(c, &vs, &ve) < 0)
            return -1;
        *gpt = KEY_IS(vs, ve, "gpt");
        return (*gpt || KEY_IS(vs, ve, "human")) ? 1 : -1;
    }
    if (KEY_IS(s, e, "value"))
        return fine_text(c) == 0 ? 2 : -1;
    return -1;
}

/* one turn: 1 for gpt, 0 for human, -1 otherwise */
static int check_turn(Cur *c)
{
    int gpt = 0;
    return each_member(c, turn_member, &gpt) == 3 ? gpt : -1;
}

static int check_conversations(Cur *c)
{
    int has_gpt = 0;
    if (enter(c, '[') < 0)
        return -1;
    for (;;) {
        int gpt = check_turn(c);
        if (gpt < 0)
            return -1;
        has_gpt |= gpt;
        int more = next_member(c, ']');
        if (more < 0)
            return -1;
        if (!more)
            break;
    }
    return has_gpt ? 0 : -1;
}

/* the kinds a scan checks (a bit mask): chat `messages`, ShareGPT `conversations`, and the
   kinds of flat string fields */
#define KIND_CHAT 1
#define KIND_SHAREGPT 2
#define KIND_ALPACA 4
#define KIND_PROMPT_COMPLETION 8
#define KIND_TEXT 16
#define KIND_ALL 31

typedef struct {
    int n;
    ptr s[MAX_KEYS];
    ptr e[MAX_KEYS];
} Keys;

/* the value of one top-level key, by the rules of the kinds checked */
static int check_member(Cur *c, ptr s, ptr e, int kinds, int *found)
{
    ptr vs, ve;
    if ((kinds & KIND_CHAT) && KEY_IS(s, e, "messages")) {
        *found = 1;
        return check_messages(c);
    }
    if (kinds & KIND_SHAREGPT) {
        if (KEY_IS(s, e, "conversations")) {
            *found = 1;
            return check_conversations(c);
        }
        if (KEY_IS(s, e, "system")) /* a string with no placeholder (blank is fine) */
            return (c->p < c->end && *c->p == '"' && scan_string(c, 1, &vs, &ve) >= 0) ? 0 : -1;
        if (KEY_IS(s, e, "tools") && !(c->p < c->end && (*c->p == '"' || *c->p == '[')))
            return -1; /* a string or a list */
    }
    if (((kinds & KIND_ALPACA) && (KEY_IS(s, e, "instruction") || KEY_IS(s, e, "output"))) ||
        ((kinds & KIND_PROMPT_COMPLETION) && (KEY_IS(s, e, "prompt") || KEY_IS(s, e, "completion"))) ||
        ((kinds & KIND_TEXT) && KEY_IS(s, e, "text"))) {
        *found = 1;
        return fine_text(c);
    }
    if ((kinds & KIND_ALPACA) && KEY_IS(s, e, "input")) /* a string with no placeholder */
        return (c->p < c->end && *c->p == '"' && scan_string(c, 1, &vs, &ve) >= 0) ? 0 : -1;
    return skip_value(c, 1);
}

/* one line: 0 when it passes (its top-level keys in `keys`), -1 otherwise */
static int check_line(ptr p, ptr end, Keys *keys, int kinds)
{
    Cur c = {p, end};
    ptr s, e;
    int found = 0;
    keys->n = 0;
    skip_ws(&c);
    if (enter(&c, '{') < 0)
        return -1;
    for (;;) {
        if (plain_key(&c, &s, &e) < 0)
            return -1;
        if (keys->n == MAX_KEYS)
            return -1;
        for (int k = 0; k < keys->n; k++)
            if (keys->e[k] - keys->s[k] == e - s && memcmp(keys->s[k], s, e - s) == 0)
                return -1; /* a repeated key */
        keys->s[keys->n] = s;
        keys->e[keys->n] = e;
        keys->n++;
        if (check_member(&c, s, e, kinds, &found) < 0)
            return -1;
        int more = next_member(&c, '}');
        if (more < 0)
            return -1;
        if (!more)
            break;
    }
    skip_ws(&c);
    return (c.p == c.end && found) ? 0 : -1;
}

typedef struct {
    Py_ssize_t len;
    char sig[MAX_SIG];
    long code;
} Shape;

/* the keys as one byte string: each key's length (2 bytes), then the key */
static Py_ssize_t signature(const Keys *keys, char *out)
{
    Py_ssize_t n = 0;
    for (int k = 0; k < keys->n; k++) {
        Py_ssize_t len = keys->e[k] - keys->s[k];
        if (len > 0xFFFF || n + 2 + len > MAX_SIG)
            return -1;
        out[n++] = (char)(len >> 8);
        out[n++] = (char)(len & 0xFF);
        memcpy(out + n, keys->s[k], len);
        n += len;
    }
    return n;
}

/* the code cached for this shape in this call: -1 slow (no room), -3 not cached yet (needs
   the GIL: shape_resolve). Runs without the GIL. */
static long shape_lookup(const Keys *keys, const Shape *shapes, int nshapes, char *sig, Py_ssize_t *len)
{
    *len = signature(keys, sig);
    if (*len < 0)
        return -1;
    for (int i = 0; i < nshapes; i++)
        if (shapes[i].len == *len && memcmp(shapes[i].sig, sig, *len) == 0)
            return shapes[i].code;
    return nshapes == MAX_SHAPES ? -1 : -3;
}

/* resolve(keys tuple) -> code, cached as a new shape; -2 on error. Needs the GIL. */
static long shape_resolve(const Keys *keys, Shape *shapes, int *nshapes, PyObject *resolve, const char *sig, Py_ssize_t len)
{
    PyObject *tuple = PyTuple_New(keys->n);
    if (!tuple)
        return -2;
    for (int k = 0; k < keys->n; k++) {
        PyObject *key = PyUnicode_DecodeUTF8((const char *)keys->s[k], keys->e[k] - keys->s[k], "strict");
        if (!key) {
            Py_DECREF(tuple);
            return -2;
        }
        PyTuple_SET_ITEM(tuple, k, key);
    }
    PyObject *r = PyObject_CallOneArg(resolve, tuple);
    Py_DECREF(tuple);
    if (!r)
        return -2;
    long code = PyLong_AsLong(r);
    Py_DECREF(r);
    if (code == -1 && PyErr_Occurred())
        return -2;
    if (code < -1)
        code = -1;
    Shape *sh = &shapes[(*nshapes)++];
    sh->len = len;
    memcpy(sh->sig, sig, len);
    sh->code = code;
    return code;
}

/* the events of one scan, gathered without the GIL (PyMem_Raw*) and turned into a list after */
typedef struct {
    Py_ssize_t index, start, end;
    long code;
} Event;

typedef struct {
    Event *e;
    Py_ssize_t n, cap;
} Events;

static int add_event(Events *ev, Py_ssize_t index, Py_ssize_t start, Py_ssize_t end, long code)
{
    if (ev->n == ev->cap) {
        Py_ssize_t cap = ev->cap ? 2 * ev->cap : 256;
        Event *e = PyMem_RawRealloc(ev->e, sizeof(Event) * cap);
        if (!e)
            return -1;
        ev->e = e;
        ev->cap = cap;
    }
    ev->e[ev->n++] = (Event){index, start, end, code};
    return 0;
}

static PyObject *event_list(const Events *ev)
{
    PyObject *list = PyList_New(ev->n);
    if (!list)
        return NULL;
    for (Py_ssize_t i = 0; i < ev->n; i++) {
        const Event *e = &ev->e[i];
        PyObject *t = Py_BuildValue("(nnnl)", e->index, e->start, e->end, e->code);
        if (!t) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, t);
    }
    return list;
}

/* The scan runs without the GIL (so a thread can check blocks while others work): it takes
   the GIL back only to call resolve for a new shape. */
static PyObject *scan(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t max_line;
    PyObject *resolve;
    int kinds;
    if (!PyArg_ParseTuple(args, "y*nOi:scan", &buf, &max_line, &resolve, &kinds))
        return NULL;
    if (kinds <= 0 || (kinds & ~KIND_ALL)) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "kinds must be a non-empty mask of CHAT, SHAREGPT, ALPACA, PROMPT_COMPLETION, TEXT");
        return NULL;
    }
    if (!PyCallable_Check(resolve)) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_TypeError, "resolve must be callable");
        return NULL;
    }
    Shape *shapes = PyMem_Malloc(sizeof(Shape) * MAX_SHAPES);
    if (!shapes) {
        PyBuffer_Release(&buf);
        return PyErr_NoMemory();
    }
    Events ev = {NULL, 0, 0};
    int nshapes = 0, failed = 0; /* failed: 1 no memory, 2 resolve raised */
    ptr base = (ptr)buf.buf, end = base + buf.len, p = base;
    Py_ssize_t clean = 0, index = 0;
    Keys keys;
    Py_BEGIN_ALLOW_THREADS
    for (;; index++) {
        ptr nl = memchr(p, '\n', end - p);
        if (!nl)
            break;
        long code = -1;
        if (nl - p <= max_line && check_line(p, nl, &keys, kinds) == 0) {
            char sig[MAX_SIG];
            Py_ssize_t len;
            code = shape_lookup(&keys, shapes, nshapes, sig, &len);
            if (code == -3) { /* a new shape: the only place the scan takes the GIL back */
                Py_BLOCK_THREADS
                code = shape_resolve(&keys, shapes, &nshapes, resolve, sig, len);
                Py_UNBLOCK_THREADS
            }
            if (code == -2) {
                failed = 2;
                break;
            }
        }
        if (code == 0)
            clean++;
        else if (add_event(&ev, index, p - base, nl + 1 - base, code) < 0) {
            failed = 1;
            break;
        }
        p = nl + 1;
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(shapes);
    PyBuffer_Release(&buf);
    PyObject *events = NULL;
    if (failed == 1)
        PyErr_NoMemory();
    else if (!failed)
        events = event_list(&ev);
    PyMem_RawFree(ev.e);
    if (!events)
        return NULL;
    return Py_BuildValue("(nnN)", clean, index, events);
}

/* for the tests: the gate's own text test on one JSON string token (bytes, quotes
   included): 1 fine (visible, no placeholder, valid), 0 not */
static PyObject *fine_string(PyObject *self, PyObject *arg)
{
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    Cur c = {(ptr)buf.buf, (ptr)buf.buf + buf.len};
    int ok = fine_text(&c) == 0 && c.p == c.end;
    PyBuffer_Release(&buf);
    return PyBool_FromLong(ok);
}

static PyObject *is_space(PyObject *self, PyObject *arg)
{
    unsigned long cp = PyLong_AsUnsignedLong(arg);
    if (cp == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (cp > 0x10FFFF) {
        PyErr_SetString(PyExc_ValueError, "not a code point (above 0x10FFFF)");
        return NULL;
    }
    return PyBool_FromLong(is_space_cp((unsigned int)cp));
}

/* utf8_error(data) -> offset of the first byte that is not valid UTF-8 (as Python's strict
   decoder reads it: no overlong forms, no surrogates), or -1. Runs without the GIL; the
   Parquet writer checks each chunk with it (pyarrow's JSON reader does not). */
/* offset of the first byte of [s, end) that starts no valid UTF-8 sequence, or -1: ASCII
   skipped 16 bytes at a time, each multi-byte sequence checked in place (Table 3-7 of the
   Unicode standard: no overlong forms, no surrogates, nothing past U+10FFFF) */
static Py_ssize_t utf8_check(ptr s, ptr end)
{
    ptr p = s;
    while (p < end) {
#if defined(__SSE2__)
        if (end - p >= 16) {
            int m = _mm_movemask_epi8(_mm_loadu_si128((const __m128i *)p));
            if (m == 0) {
                p += 16;
                continue;
            }
            p += __builtin_ctz(m); /* the first byte >= 0x80 */
        }
#endif
        unsigned int c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        Py_ssize_t left = end - p;
        if (c >= 0xC2 && c <= 0xDF) {
            if (left < 2 || (p[1] & 0xC0) != 0x80)
                return p - s;
            p += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (left < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 ||
                (c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0))
                return p - s;
            p += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (left < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80 ||
                (c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90))
                return p - s;
            p += 4;
        } else {
            return p - s;
        }
    }
    return -1;
}

/* utf8_error(data) -> offset of the first byte that is not valid UTF-8 (as Python's strict
   decoder reads it), or -1. Runs without the GIL; the Parquet writer checks each chunk
   with it (pyarrow's JSON reader does not). */
static PyObject *utf8_error(PyObject *self, PyObject *arg)
{
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t bad;
    Py_BEGIN_ALLOW_THREADS
    bad = utf8_check((ptr)buf.buf, (ptr)buf.buf + buf.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    return PyLong_FromSsize_t(bad);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(data, max_line, resolve, kinds) -> (clean, lines, events): the gate over raw lines."},
    {"utf8_error", utf8_error, METH_O,
     "utf8_error(data) -> int: offset of the first byte that is not valid UTF-8, or -1."},
    {"fine_string", fine_string, METH_O, "fine_string(token) -> bool: the gate's text test (tests)."},
    {"is_space", is_space, METH_O, "is_space(code_point) -> bool: str.isspace for one code point (tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "chatgate", NULL, -1, methods};

PyMODINIT_FUNC PyInit_chatgate(void)
{
    for (int i = 0; i < 256; i++) {
        int stop = i == '"' || i == '\\' || i < 0x20 || i >= 0x80;
        plain_stop[i] = (unsigned char)stop;
        content_stop[i] = (unsigned char)(stop || i == '{' || i == '<');
    }
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddIntConstant(m, "CHAT", KIND_CHAT) < 0 ||
              PyModule_AddIntConstant(m, "SHAREGPT", KIND_SHAREGPT) < 0 ||
              PyModule_AddIntConstant(m, "ALPACA", KIND_ALPACA) < 0 ||
              PyModule_AddIntConstant(m, "PROMPT_COMPLETION", KIND_PROMPT_COMPLETION) < 0 ||
              PyModule_AddIntConstant(m, "TEXT", KIND_TEXT) < 0 ||
              PyModule_AddIntConstant(m, "ALL", KIND_ALL) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
