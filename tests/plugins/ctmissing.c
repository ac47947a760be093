/* A library the needsdep plugin links against; the build removes it after linking, so
 * loading needsdep.so fails with the dependency named in dlerror. */
int ctmissing_symbol(void);
int ctmissing_symbol(void) { return 42; }
