using System.Security.Cryptography;
using MassTransit;
using Microsoft.Extensions.Logging;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.Sealing;
using Temporalio.Exceptions;

namespace SEmigrate.Activities;

/// <summary>The operator's public key this host pins (setting Trust:OperatorKey); null when none is set,
/// and then every step is refused.</summary>
public sealed record OperatorTrust(byte[]? PublicKey);

/// <summary>A host's check that a step is one the migration's signed request allows: the request (or the
/// drain order behind it) is the operator's, names this migration and VM, has not expired, and the step's
/// own inputs are what it says (each activity checks those with <see cref="RefuseAsync"/>). A refusal changes
/// nothing, fails the step for good and is recorded as a security event (StepDenied).</summary>
public sealed class StepGuard(HostContext host, OperatorTrust trust, IBus bus, AuditRoute audit, ILogger<StepGuard> logger)
{
    /// <summary>The request that allows <paramref name="step"/> for <paramref name="migrationId"/> and
    /// <paramref name="vm"/>. <paramref name="expiredToo"/>: releases are allowed after the request
    /// expired (undoing must always be possible; a host only ever lets go of the VM it was asked to).</summary>
    public async Task<MigrationRequest> AllowAsync(string step, Guid migrationId, Guid vm, MigrationRequest? request, bool expiredToo = false)
    {
        if ((Problem(migrationId, vm, request, expiredToo) ?? Rebound(migrationId, request!)) is { } problem)
        {
            throw await RefuseAsync(step, migrationId, vm, problem);
        }
        return request!;
    }

    private static readonly Lock Binding = new();

    /// <summary>The first request this host sees for a migration is the one every later step of it here must
    /// carry: a request under a drain order is signed by nobody, so without this one step could name one
    /// main host and the next another (an undo vouched for by a host that never saw the migration).</summary>
    private string? Rebound(Guid migrationId, MigrationRequest r)
    {
        var digest = Convert.ToHexString(SHA256.HashData([.. OperatorSignatures.Bytes(r), .. r.Order?.Signature ?? r.Signature ?? []]));
        var path = Path.Combine(host.MigrationDirectory(migrationId), "request.sha256");
        lock (Binding)
        {
            if (!File.Exists(path))
            {
                // Whole or not at all: a torn file would refuse every later step of the migration, releases too.
                var aside = $"{path}.{Environment.ProcessId}.tmp";
                File.WriteAllText(aside, digest);
                File.Move(aside, path, overwrite: false);
                return null;
            }
            return File.ReadAllText(path) == digest ? null
                : $"the step carries another request for migration {migrationId} than its first step here did: one migration, one request";
        }
    }

    /// <summary>A digest of <paramref name="range"/> of a VM of <paramref name="pfnLimit"/> pages: within them, in at
    /// most 65536 chunks, and within the VM's digest budget here. Each digest at the main host pages the whole
    /// range in (evicting the guest's working set) and any holder of the request may ask: a VM gets at most (per migration: one request each)
    /// <see cref="DigestBurst"/> passes over its memory at once, then one more per <see cref="DigestRefill"/>.</summary>
    public async Task AllowDigestAsync(DigestMemory range, ulong pfnLimit)
    {
        var problem = PageDigests.Problem(range, pfnLimit);
        if (problem is null)
        {
            var passes = (double)(range.EndPfn - range.FirstPfn) / Math.Max(1UL, pfnLimit);
            lock (digestBudgets)
            {
                var now = System.Diagnostics.Stopwatch.GetTimestamp(); // monotonic: a clock set back refills nothing
                double Refilled((double Left, long At) b) => Math.Min(DigestBurst, b.Left + System.Diagnostics.Stopwatch.GetElapsedTime(b.At, now) / DigestRefill);
                if (digestBudgets.Count >= 1024)
                {
                    // Forget the budgets that are full again: they are what a new one would be.
                    foreach (var full in digestBudgets.Where(b => Refilled(b.Value) >= DigestBurst).Select(b => b.Key).ToList())
                    {
                        digestBudgets.Remove(full);
                    }
                }
                var left = Refilled(digestBudgets.GetValueOrDefault((range.MigrationId, range.Vm), (DigestBurst, now)));
                if (left >= passes)
                {
                    digestBudgets[(range.MigrationId, range.Vm)] = (left - passes, now);
                }
                else
                {
                    digestBudgets[(range.MigrationId, range.Vm)] = (left, now);
                    problem = $"VM {range.Vm}'s memory was digested too often here: at most {DigestBurst} passes over it at once, then one more every {DigestRefill.TotalSeconds:0} s " +
                        $"({left:0.##} left, this one is {passes:0.##})";
                }
            }
        }
        if (problem is not null)
        {
            throw await RefuseAsync(nameof(DigestMemory), range.MigrationId, range.Vm, problem);
        }
    }

    public const double DigestBurst = 8;

    public static readonly TimeSpan DigestRefill = TimeSpan.FromSeconds(30);

    private readonly Dictionary<(Guid Migration, Guid Vm), (double Left, long At)> digestBudgets = [];

    /// <summary>A stop of a VM running here, as the operator signed it (and not expired).</summary>
    public async Task AllowStopAsync(StopVm stop)
    {
        var problem = trust.PublicKey is not { } operatorKey ? NoOperatorKey
            : !OperatorSignatures.IsSigned(stop, operatorKey) ? "the stop is not signed by the operator this host trusts (or was altered)"
            : stop.NotAfter < DateTimeOffset.UtcNow ? $"the stop expired at {stop.NotAfter:u}"
            : null;
        if (problem is not null)
        {
            throw await RefuseAsync(nameof(StopVm), stop.MigrationId, stop.Vm, problem);
        }
    }

    /// <summary>Refuses the step (records it, logs it); throw what it returns.</summary>
    public async Task<Exception> RefuseAsync(string step, Guid migrationId, Guid vm, string problem)
    {
        logger.LogWarning("refused {Step} of migration {Migration} (VM {Vm}): {Problem}", step, migrationId, vm, problem);
        try
        {
            var e = new StepDenied(migrationId, vm, host.Host, step, problem, DateTimeOffset.UtcNow);
            await (await bus.GetSendEndpoint(audit.AddressOf(migrationId))).Send((object)e);
        }
#pragma warning disable CA1031 // the refusal stands whether or not it could be recorded
        catch (Exception x)
#pragma warning restore CA1031
        {
            logger.LogError("the refusal of {Step} of migration {Migration} could not be recorded: {Why}", step, migrationId, x.Message);
        }
        return new ApplicationFailureException($"{step} refused at {host.Host}: {problem}", StepErrors.Denied, nonRetryable: true);
    }

    /// <summary>The key the operator pinned for <paramref name="name"/> in the request (or its drain order).</summary>
    public static byte[]? PinnedKey(MigrationRequest request, string name) =>
        (request.Order?.Hosts ?? request.Pinned ?? []).FirstOrDefault(p => p.Host == name)?.HostKey;

    /// <summary>The hosts a request sends pages to.</summary>
    public static bool IsDestination(MigrationRequest request, string name) => request.Main.Host == name || request.SubHosts.Any(s => s.Host == name);

    private string NoOperatorKey => $"host {host.Host} pins no operator key (setting Trust:OperatorKey), so it takes no step";

    private string? Problem(Guid migrationId, Guid vm, MigrationRequest? r, bool expiredToo) =>
        trust.PublicKey is not { } operatorKey ? NoOperatorKey : RequestProblem(operatorKey, migrationId, vm, r, expiredToo);

    /// <summary>Why <paramref name="r"/> does not allow work on <paramref name="migrationId"/> and
    /// <paramref name="vm"/> under the operator's <paramref name="operatorKey"/>; null when it does.</summary>
    public static string? RequestProblem(byte[] operatorKey, Guid migrationId, Guid vm, MigrationRequest? r, bool expiredToo)
    {
        if (r is null)
        {
            return "the step carries no signed request";
        }
        if (r.MigrationId != migrationId || r.Vm != vm)
        {
            return $"the step is for migration {migrationId} (VM {vm}), its request for migration {r.MigrationId} (VM {r.Vm})";
        }
        DateTimeOffset? notAfter;
        if (r.Order is { } order)
        {
            if (order.MainHosts is not { Count: > 0 })
            {
                return $"the drain order for {order.Host} names no main hosts (an order made before orders named them): make it again with --main";
            }
            if (!OperatorSignatures.IsSigned(order, operatorKey))
            {
                return "its drain order is not signed by the operator this host trusts (or was made by an older version: make it again with --main)";
            }
            var allowed = order.Hosts.Select(h => h.Host).ToHashSet(StringComparer.Ordinal);
            if (r.Source != order.Host || r.Mode != order.Mode || !r.PlainProcesses.SequenceEqual(order.PlainProcesses, StringComparer.Ordinal))
            {
                return $"the drain order for {order.Host} ({order.Mode}) does not allow a migration from {r.Source} ({r.Mode}, plain: {string.Join(",", r.PlainProcesses)})";
            }
            if (r.SubHosts.Prepend(r.Main).FirstOrDefault(d => !allowed.Contains(d.Host) || d.Host == order.Host) is { } stranger)
            {
                return $"the drain order for {order.Host} does not allow {stranger.Host} as a destination";
            }
            // The main host gets the data key: only a host the operator named as one may be it (a host that
            // holds sealed pages for the drain must not name itself main and take every page and the key).
            if (order.MainHosts is not { } mains || !mains.Contains(r.Main.Host, StringComparer.Ordinal))
            {
                return $"the drain order for {order.Host} does not allow {r.Main.Host} as a main host (it allows {string.Join(", ", order.MainHosts ?? [])})";
            }
            notAfter = order.NotAfter;
        }
        else
        {
            if (!OperatorSignatures.IsSigned(r, operatorKey))
            {
                return "the request is not signed by the operator this host trusts (or was altered)";
            }
            notAfter = r.NotAfter;
        }
        if (notAfter is null)
        {
            return "the request has no expiry";
        }
        if (!expiredToo && notAfter < DateTimeOffset.UtcNow)
        {
            return $"the request expired at {notAfter:u}";
        }
        return null;
    }
}
