// SPDX-License-Identifier: MIT
// The generated list of built-in plugins of this binary (see cmake/CalderaPlugin.cmake).
#ifndef CALDERA_BUILTINS_H
#define CALDERA_BUILTINS_H
struct caldera_plugin;
typedef const struct caldera_plugin * (*caldera_builtin_fn)(void);
extern const caldera_builtin_fn caldera_builtin_list[]; // ends with NULL
// 1 when the first-party plugins of this build are shared objects (CALDERA_BUILTIN_PLUGINS=OFF):
// a context then loads the default plugin places on its first registry lookup.
extern const int caldera_builtin_autoload;
#endif
