/* The hdinsight target: an existing HDInsight (or any) Spark cluster, reached over SSH on its
 * head node (<cluster>-ssh.azurehdinsight.net).  Runs are `spark-submit` in client deploy
 * mode on the head node, started, watched and cancelled by remotevm's agent, whose sources
 * are compiled into hdinsight.so (as slurm.so does).
 *
 * hdinsight.c  descriptor, settings, compute operations (attach checks the login, the OS and
 *              `spark-submit --version`).
 * run.c        run operations: remotevm's, with submit building the spark-submit command and
 *              prepare checking the framework and the step's keys. */
#ifndef CTARGET_HDINSIGHT_H
#define CTARGET_HDINSIGHT_H

#include "remotevm.h"

extern const ctarget_host *HDI_H;
extern const ctarget_run_ops hdi_run_ops;

/* The spark-submit command line's words for a run (argv[0] = the spark_submit setting),
 * without the application and its arguments; NULL with err set when the run's or step's
 * options are wrong.  Caller frees with json_decref (an array of strings). */
json_t *hdi_spark_words(const ctarget_target *t, const ctarget_run_info *run,
                        ctarget_error *err);

/* arm.c: resource_id resolved through ARM into the target's endpoint.json; the host table
 * every part of the plugin (and remotevm's code in it) uses, whose config_get0 answers
 * address/ssh_port/livy_url from there when the target has no address */
const ctarget_host *hdi_wrap_host(const ctarget_host *real);
int hdi_needs_resolving(const ctarget_target *t);
ctarget_status hdi_resolve(ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                           ctarget_error *err);

/* livy.c: mode=livy (runs as Livy batches; files still shipped over SSH) */
int hdi_livy_mode(const ctarget_target *t);
ctarget_status hdi_livy_check(ctarget_call *c, const ctarget_target *t, ctarget_obj *facts,
                              ctarget_error *err);
ctarget_status hdi_livy_submit(void *ctx, ctarget_call *c, ctarget_target *t,
                               const ctarget_run_info *run, ctarget_error *err);
ctarget_status hdi_livy_poll(void *ctx, ctarget_call *c, ctarget_target *t,
                             const ctarget_run_info *run, long wait_ms, ctarget_run_poll *o,
                             ctarget_error *err);
ctarget_status hdi_livy_read_log(void *ctx, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, uint64_t offset,
                                 ctarget_write_fn out, void *out_arg, ctarget_error *err);
ctarget_status hdi_livy_cancel(void *ctx, ctarget_call *c, ctarget_target *t,
                               const ctarget_run_info *run, ctarget_error *err);

#endif
