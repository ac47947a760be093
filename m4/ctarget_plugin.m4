# CTARGET_PLUGIN(NAME, DEFAULT, [CHECKS-IF-ENABLED])
# --enable-plugin-NAME / --disable-plugin-NAME, an automake conditional PLUGIN_NAME, and the
# list of enabled plugins in ctarget_enabled_plugins.
AC_DEFUN([CTARGET_PLUGIN], [
  AC_ARG_ENABLE([plugin-$1],
    [AS_HELP_STRING([--disable-plugin-$1], [do not build the $1 compute-target plugin])],
    [], [enable_plugin_$1=$2])
  AS_IF([test "x$enable_plugin_$1" = xyes], [
    $3
    ctarget_enabled_plugins="$ctarget_enabled_plugins $1"
  ])
  AM_CONDITIONAL([PLUGIN_]m4_toupper([$1]), [test "x$enable_plugin_$1" = xyes])
])
