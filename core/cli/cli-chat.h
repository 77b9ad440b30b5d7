// SPDX-License-Identifier: MIT
// cli-chat.h: one user turn rendered as a ChatML chat template (tokenizer.chat_template) renders
// it, for `caldera-pipe generate --chat [--system TEXT]`.
#ifndef CALDERA_CLI_CHAT_H
#define CALDERA_CLI_CHAT_H

#include <stddef.h>

/**
 * Render the conversation [system (optional), user] with add_generation_prompt as the ChatML
 * template @p tmpl does:
 *   <|im_start|>system\n S <|im_end|>\n  <|im_start|>user\n U <|im_end|>\n  <|im_start|>assistant\n
 * S is @p system when given (may be ""), else the template's default system turn when it has one
 * (a literal '<|im_start|>system\n...<|im_end|>' in the Jinja text, which templates such as
 * SmolLM2's and Qwen2's emit when the first message is not a system one), else no system turn.
 * Returns 0 and *out (malloc'd), or -1 with a message in err: no template, not ChatML, a default
 * system literal that does not end, out of memory.
 */
int cli_chat_render(const char * tmpl, const char * system, const char * user, char ** out, char * err, size_t errlen);

#endif
