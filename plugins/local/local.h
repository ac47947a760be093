#ifndef CTARGET_PLUGIN_LOCAL_H
#define CTARGET_PLUGIN_LOCAL_H

#include <ctarget/plugin.h>

#define LOCAL_HIDDEN __attribute__((visibility("hidden")))

LOCAL_HIDDEN void local_machine_facts(const ctarget_host *h, ctarget_obj *facts);

#endif
