/* libctazure internals shared by its source files (not for plugins). */
#ifndef CTARGET_AZURE_INT_H
#define CTARGET_AZURE_INT_H

#include <strings.h>

#include "azure.h"
#include "azure_parse.h"

#endif
