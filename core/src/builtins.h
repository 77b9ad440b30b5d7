// SPDX-License-Identifier: MIT
// The generated list of built-in plugins of this binary (see cmake/CalderaPlugin.cmake).
#ifndef CALDERA_BUILTINS_H
#define CALDERA_BUILTINS_H
struct caldera_plugin;
typedef const struct caldera_plugin * (*caldera_builtin_fn)(void);
extern const caldera_builtin_fn caldera_builtin_list[]; // ends with NULL
#endif
