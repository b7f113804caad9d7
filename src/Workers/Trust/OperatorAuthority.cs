using Marten;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.Sealing;
using SEmigrate.Workers.Settings;

namespace SEmigrate.Workers.Trust;

/// <summary>A host the operator enrolled: its key, vouched for by the operator's signature (the database
/// is not trusted to keep it: a swapped key fails the signature when it is read).</summary>
public sealed record HostEnrolment(string Id, byte[] HostKey, DateTimeOffset At, byte[] Signature);

/// <summary>What the operator's commands do with the operator's key: enrol hosts, and sign migration
/// requests and drain orders with the enrolled keys pinned in them.</summary>
public static class OperatorAuthority
{
    public static OperatorKey LoadKey(TrustOptions o) => File.Exists(o.OperatorKeyFile) ? OperatorKey.Load(o.OperatorKeyFile)
        : throw new InvalidOperationException($"no operator key at {o.OperatorKeyFile} (setting Trust:OperatorKeyFile): `semigrate operator init` makes one");

    public static async Task<HostEnrolment> EnrolAsync(IDocumentStore store, OperatorKey key, HostIdentity identity, CancellationToken ct)
    {
        var at = DateTimeOffset.UtcNow;
        var enrolment = new HostEnrolment(identity.Host, identity.HostKey, at, key.Sign(OperatorSignatures.Enrolment(identity.Host, identity.HostKey, at)));
        await using var session = store.LightweightSession();
        session.Store(enrolment);
        await session.SaveChangesAsync(ct);
        EnrolmentLedger.Enrolled(key, store.Options.DatabaseSchemaName, enrolment);
        return enrolment;
    }

    /// <summary>Removes the host's enrolment and records, beside the operator's key, that it was revoked: no
    /// request or order pins it again, even if the database's owner puts the enrolment back.</summary>
    public static async Task<bool> RevokeAsync(IDocumentStore store, OperatorKey key, string host, CancellationToken ct)
    {
        EnrolmentLedger.Revoked(key, store.Options.DatabaseSchemaName, host); // first: a crash after it leaves the host revoked
        await using var session = store.LightweightSession();
        var was = await session.LoadAsync<HostEnrolment>(host, ct) is not null;
        session.Delete<HostEnrolment>(host);
        await session.SaveChangesAsync(ct);
        return was;
    }

    /// <summary>The enrolled keys of <paramref name="hosts"/> (every host this operator enrolled when null: one
    /// enrolled by another operator, or tampered with as below, is not among them), each checked against the operator's signature and
    /// against the operator's own record of its last enrolment (<see cref="EnrolmentLedger"/>); a host named
    /// that is not enrolled, or whose enrolment was altered, rolled back or revoked, fails.</summary>
    public static async Task<IReadOnlyList<PinnedHost>> PinAsync(IDocumentStore store, OperatorKey key, IReadOnlyCollection<string>? hosts, CancellationToken ct)
    {
        var pinned = await PinAsync(store, key.PublicKey, hosts, ct);
        await using var query = store.QuerySession();
        var refused = new HashSet<string>(StringComparer.Ordinal);
        foreach (var e in await query.LoadManyAsync<HostEnrolment>(ct, [.. pinned.Select(p => p.Host)]))
        {
            if (EnrolmentLedger.Problem(key, store.Options.DatabaseSchemaName, e) is { } problem)
            {
                // Named, it fails; among every enrolled host, it is left out, and the others still serve.
                _ = hosts is null ? refused.Add(e.Id) : throw new InvalidOperationException(problem);
            }
        }
        return [.. pinned.Where(p => !refused.Contains(p.Host))];
    }

    /// <summary>The same, checked against the operator's public key only (the auditor checks hosts' signatures so).</summary>
    public static async Task<IReadOnlyList<PinnedHost>> PinAsync(IDocumentStore store, byte[] publicKey, IReadOnlyCollection<string>? hosts, CancellationToken ct)
    {
        await using var query = store.QuerySession();
        var enrolled = hosts is null ? await query.Query<HostEnrolment>().ToListAsync(ct) : await query.LoadManyAsync<HostEnrolment>(ct, hosts);
        if (hosts?.FirstOrDefault(h => enrolled.All(e => e.Id != h)) is { } missing)
        {
            throw new InvalidOperationException($"host {missing} is not enrolled: `semigrate host enrol {missing} --identity FILE` (its worker writes STATE/{HostIdentity.FileName})");
        }
        var signed = enrolled.Where(e => OperatorKey.Verify(publicKey, OperatorSignatures.Enrolment(e.Id, e.HostKey, e.At), e.Signature)).ToList();
        if (hosts is not null && enrolled.FirstOrDefault(e => !signed.Contains(e)) is { } forged)
        {
            throw new InvalidOperationException($"the enrolment of host {forged.Id} is not signed by this operator's key (altered in the database, or enrolled by another operator)");
        }
        return [.. signed.OrderBy(e => e.Id, StringComparer.Ordinal).Select(e => new PinnedHost(e.Id, e.HostKey))];
    }

    /// <summary>The request signed, valid for <paramref name="validFor"/>, with its main host's and its source's
    /// enrolled keys pinned (the data key is wrapped for the one, by the other: both must be enrolled), and
    /// those of its sub-hosts that are enrolled (destinations wrap the VM's capability for the source's; a
    /// destination refuses a request that pins none for it).</summary>
    public static async Task<MigrationRequest> SignAsync(IDocumentStore store, OperatorKey key, MigrationRequest request, TimeSpan validFor, CancellationToken ct)
    {
        var required = await PinAsync(store, key, [.. new[] { request.Main.Host, request.Source }.Distinct(StringComparer.Ordinal)], ct);
        var others = (await PinAsync(store, key, null, ct)).Where(p => p.Host != request.Main.Host && p.Host != request.Source && request.SubHosts.Any(s => s.Host == p.Host));
        var pinned = required.Concat(others).ToList();
        return OperatorSignatures.Sign(request with { Pinned = pinned, NotAfter = DateTimeOffset.UtcNow + validFor }, key);
    }

    /// <summary>The request signed with the operator's key (Trust:OperatorKeyFile), valid for Trust:ValidHours.</summary>
    public static async Task<MigrationRequest> SignAsync(IServiceProvider services, MigrationRequest request, CancellationToken ct)
    {
        var trust = services.GetRequiredService<IOptions<TrustOptions>>().Value;
        using var key = LoadKey(trust);
        return await SignAsync(services.GetRequiredService<IDocumentStore>(), key, request, TimeSpan.FromHours(trust.ValidHours), ct);
    }

    /// <summary>The stop signed with the operator's key, valid for an hour.</summary>
    public static StopVm Sign(IServiceProvider services, StopVm stop)
    {
        using var key = LoadKey(services.GetRequiredService<IOptions<TrustOptions>>().Value);
        return OperatorSignatures.Sign(stop, key, TimeSpan.FromHours(1));
    }

    /// <summary>The drain signed as the operator's order (valid for <paramref name="validFor"/>, Trust:ValidHours by default),
    /// onto the hosts of <paramref name="onto"/> (default: every enrolled host), with <paramref name="mains"/> the hosts
    /// that may be main hosts.</summary>
    public static async Task<DrainHost> OrderAsync(IServiceProvider services, DrainHost drain, IReadOnlyCollection<string> mains, CancellationToken ct,
        TimeSpan? validFor = null, IReadOnlyCollection<string>? onto = null)
    {
        var trust = services.GetRequiredService<IOptions<TrustOptions>>().Value;
        using var key = LoadKey(trust);
        return drain with
        {
            Order = await OrderDrainAsync(services.GetRequiredService<IDocumentStore>(), key, drain.Host, drain.Mode, drain.PlainProcesses, mains,
                validFor ?? TimeSpan.FromHours(trust.ValidHours), ct, onto),
        };
    }

    /// <summary>An order to drain <paramref name="host"/> onto the hosts of <paramref name="onto"/> (every other
    /// enrolled host when null; all pinned), valid for <paramref name="validFor"/>. The operator names the main
    /// hosts (<paramref name="mains"/>, among them): they get guests' data keys, so no host's own report of its
    /// roles makes it one; the others hold sealed pages only.</summary>
    public static async Task<DrainOrder> OrderDrainAsync(IDocumentStore store, OperatorKey key, string host, MigrationMode mode, IReadOnlyList<string> plainProcesses,
        IReadOnlyCollection<string> mains, TimeSpan validFor, CancellationToken ct, IReadOnlyCollection<string>? onto = null)
    {
        if (mains.Count == 0)
        {
            throw new InvalidOperationException("name the hosts that may be main hosts (they get the guests' data keys): --main HOST");
        }
        // The hosts that may take its guests, and its own key (the drained source's).
        var enrolled = await PinAsync(store, key, onto is null ? null : [.. onto.Concat(mains).Append(host).Distinct(StringComparer.Ordinal)], ct);
        if (mains.FirstOrDefault(m => m == host || enrolled.All(p => p.Host != m)) is { } stranger)
        {
            throw new InvalidOperationException(stranger == host ? $"{host} is the host drained: it cannot be a main host of its own drain"
                : $"main host {stranger} is not enrolled: `semigrate host enrol {stranger} --identity FILE`");
        }
        return OperatorSignatures.Sign(new DrainOrder(host, mode, plainProcesses, enrolled, DateTimeOffset.UtcNow + validFor, [],
            [.. mains.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal)]), key);
    }
}
