using SEmigrate.Contracts.Migration;

namespace SEmigrate.Workflows;

/// <summary>What a drain may do beyond computing: read the inventory, wait on several migrations, migrate
/// one VM (a whole split migration: a child workflow on Temporal, the embedded engine's run otherwise).</summary>
public interface IDrainSteps
{
    Task<DrainInventory> InventoryAsync(string host, CancellationToken ct);

    Task<T[]> WhenAllAsync<T>(IEnumerable<Task<T>> steps);

    Task<MigrationOutcome> MigrateAsync(MigrationRequest request, CancellationToken ct);
}

/// <summary>Host maintenance, written once for both engines: every guest of the drained host is placed
/// on the other hosts from the inventory (the main host with the most room takes what it can, the
/// hosts that hold pages the rest), room reserved as it is planned so that guests migrating at once
/// never count the same room twice, then migrated, at most MaxConcurrent at a time. A guest there is
/// no room for, and one whose migration did not switch over, is reported with the reason; one whose
/// migration was refused or undone because a host it was placed on had no worker is placed again
/// without that host (up to <see cref="MaxPlacements"/> places).</summary>
public sealed class DrainProcedure(IDrainSteps steps)
{
    public async Task<DrainReport> RunAsync(DrainHost drain, CancellationToken ct)
    {
        var inventory = await steps.InventoryAsync(drain.Host, ct);
        // Only the hosts the operator's order allows (and pinned keys for) take guests.
        var allowed = drain.Order?.Hosts.Select(h => h.Host).ToHashSet(StringComparer.Ordinal);
        // Only the hosts the order names as main hosts may take a guest's data key.
        var targets = MainsOnly(inventory.Hosts, drain.Order?.MainHosts?.ToHashSet(StringComparer.Ordinal));
        var room = inventory.Hosts.Where(h => h.Host != drain.Host && (allowed is null || allowed.Contains(h.Host)))
            .ToDictionary(h => h.Host, h => h.FreePages, StringComparer.Ordinal);
        var planned = new List<Planned>();
        var notMoved = new List<DrainNotMoved>();
        foreach (var guest in inventory.Guests.OrderByDescending(g => g.Pages).ThenBy(g => g.Name, StringComparer.Ordinal))
        {
            if (guest.CannotMove is { } why)
            {
                notMoved.Add(new DrainNotMoved(guest.Name, why));
            }
            else if (Plan(drain, guest, 1, targets, room) is { } p)
            {
                planned.Add(p);
            }
            else
            {
                notMoved.Add(new DrainNotMoved(guest.Name, NoRoom(drain, guest, targets, room)));
            }
        }
        var moved = new List<DrainMoved>();
        while (planned.Count > 0)
        {
            var again = new List<Planned>();
            foreach (var batch in planned.Chunk(Math.Max(1, drain.MaxConcurrent)))
            {
                var outcomes = await steps.WhenAllAsync(batch.Select(async p =>
                {
                    try
                    {
                        return (p, Outcome: await steps.MigrateAsync(p.Request, ct), Why: (string?)null);
                    }
                    catch (Exception e) when (e is not OperationCanceledException)
                    {
                        return (p, Outcome: (MigrationOutcome?)null, Why: e.Message);
                    }
                }));
                foreach (var (p, outcome, why) in outcomes)
                {
                    if (outcome is { State: MigrationState.SwitchedOver })
                    {
                        moved.Add(new DrainMoved(p.Guest.Name, p.Request.Vm, p.Request.MigrationId, p.Request.Main.Host, outcome.State));
                    }
                    else if (outcome is { State: MigrationState.Refused or MigrationState.Compensated, Unreachable: { } dead } && p.Attempt < MaxPlacements)
                    {
                        // The guest stayed at its source: it goes elsewhere, with the room it held given back
                        // and the host that had no worker taking no guest of this drain any more.
                        Give(room, p.Held);
                        room.Remove(dead);
                        if (Plan(drain, p.Guest, p.Attempt + 1, targets, room) is { } next)
                        {
                            again.Add(next);
                        }
                        else
                        {
                            notMoved.Add(new DrainNotMoved(p.Guest.Name, $"{outcome.State}: {outcome.Reason}; and {NoRoom(drain, p.Guest, targets, room)} without {dead}"));
                        }
                    }
                    else
                    {
                        notMoved.Add(new DrainNotMoved(p.Guest.Name, why ?? $"{outcome!.State}: {outcome.Reason}"));
                    }
                }
            }
            planned = again;
        }
        return new DrainReport(drain.Host, moved, notMoved);
    }

    /// <summary>The hosts, those the order does not name as main hosts holding pages only.</summary>
    private static IReadOnlyList<DrainTarget> MainsOnly(IReadOnlyList<DrainTarget> hosts, HashSet<string>? mains) =>
        mains is null ? hosts : [.. hosts.Select(h => h.CanBeMain && !mains.Contains(h.Host) ? h with { CanBeMain = false } : h)];

    /// <summary>How many places a guest is tried at, one after another, when a place it was sent to had no worker.</summary>
    public const int MaxPlacements = 3;

    /// <summary>A guest's planned migration (its <paramref name="Attempt"/>th placement) and the room it holds on each host.</summary>
    private sealed record Planned(DrainGuest Guest, int Attempt, MigrationRequest Request, IReadOnlyDictionary<string, long> Held);

    private static string NoRoom(DrainHost drain, DrainGuest guest, IReadOnlyList<DrainTarget> hosts, Dictionary<string, long> room) =>
        $"no room: it has {guest.Pages} pages, the other hosts have {room.Values.Sum()} free{(hosts.Any(h => h.CanBeMain && h.Host != drain.Host && room.ContainsKey(h.Host)) ? "" : ", and none can be its main host")}";

    /// <summary>Gives the room <paramref name="held"/> back (<paramref name="sign"/> 1) or takes it (-1), on the hosts still in the plan.</summary>
    private static void Give(Dictionary<string, long> room, IReadOnlyDictionary<string, long> held, int sign = 1)
    {
        foreach (var (host, pages) in held)
        {
            if (room.ContainsKey(host))
            {
                room[host] += sign * pages;
            }
        }
    }

    /// <summary>The guest's request, its room taken from <paramref name="room"/>; null if it does not fit.</summary>
    private static Planned? Plan(DrainHost drain, DrainGuest guest, int attempt, IReadOnlyList<DrainTarget> hosts, Dictionary<string, long> room)
    {
        // What its hand-over brings, as its source reported it (histories from before: the fixed allowance).
        var handOver = guest.HandOverPages > 0 ? guest.HandOverPages : HandOverPages;
        var main = hosts.Where(h => h.CanBeMain && room.ContainsKey(h.Host) && room[h.Host] > handOver)
            .OrderByDescending(h => room[h.Host]).ThenBy(h => h.Host, StringComparer.Ordinal).FirstOrDefault();
        if (main is null)
        {
            return null;
        }
        var atMain = Math.Min(guest.Pages, room[main.Host] - handOver);
        var subs = new List<Destination>();
        var left = guest.Pages - atMain;
        foreach (var sub in hosts.Where(h => h.CanHoldPages && h.Host != main.Host && room.ContainsKey(h.Host) && room[h.Host] > 0)
                     .OrderByDescending(h => room[h.Host]).ThenBy(h => h.Host, StringComparer.Ordinal))
        {
            if (left <= 0)
            {
                break;
            }
            var take = Math.Min(left, room[sub.Host]);
            subs.Add(new Destination(sub.Host, take));
            left -= take;
        }
        if (left > 0)
        {
            return null;
        }
        var held = new Dictionary<string, long>(StringComparer.Ordinal) { [main.Host] = atMain + handOver };
        foreach (var s in subs)
        {
            held[s.Host] = s.CapacityPages;
        }
        Give(room, held, sign: -1);
        // Whole chunks are placed: the main host takes no more than its share, and the sub-hosts, which
        // take what is left, are offered a little of their room beyond theirs for the last chunk.
        // A later placement is another migration of the same VM.
        var migration = attempt == 1 ? "migration" : $"migration-{attempt}";
        return new Planned(guest, attempt, new MigrationRequest(IdOf(drain, guest, migration), IdOf(drain, guest, "vm"), guest.Name, drain.Host, new Destination(main.Host, atMain),
            [.. subs.Select(s => s with { CapacityPages = s.CapacityPages + Slack(room, s.Host) })], drain.Mode, drain.PlainProcesses, Order: drain.Order), held);
    }

    /// <summary>Room the main host keeps for what the hand-over brings beside the guest's pages (the
    /// manifest; a running guest's kernel, initramfs and device state) when the source did not report it: 16 MiB.</summary>
    public const long HandOverPages = 4096;

    /// <summary>A guest's VM and migration ids in this drain: made from the drain's id and the guest's name,
    /// so a replay (and a drain run again with the same id) makes the same ones.</summary>
    public static Guid IdOf(DrainHost drain, DrainGuest guest, string what) =>
        new(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes($"semigrate-drain|{drain.DrainId:N}|{guest.Name}|{what}")).AsSpan(0, 16));

    /// <summary>Room a destination may give beyond the share planned for it (placement moves whole chunks).</summary>
    private static long Slack(Dictionary<string, long> room, string host) => Math.Min(room[host], 4096);
}
