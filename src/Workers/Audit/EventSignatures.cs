using System.Collections.Concurrent;
using System.Text;
using Marten;
using Microsoft.Extensions.Options;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.Sealing;
using SEmigrate.Workers.Processes;
using SEmigrate.Workers.Settings;
using SEmigrate.Workers.Trust;

namespace SEmigrate.Workers.Audit;

/// <summary>Who signs the events this process sends to the audit trail: a host with its own key
/// (`host:NAME`), an orchestrator with its auditor key (`auditor:FINGERPRINT`).</summary>
public sealed record EventSigner(string Name, Func<byte[], byte[]> Sign)
{
    public const string SignerHeader = "semigrate-signer";
    public const string SignatureHeader = "semigrate-signature";
    public const string HostPrefix = "host:";
    public const string AuditorPrefix = "auditor:";

    /// <summary>Whether <paramref name="message"/> is one the auditor records (so it is signed).</summary>
    public static bool Signs(object message) => message is IMigrationEvent or IHostEvent;

    /// <summary>What is signed: a label of its own, then the event as the chain hashes it.</summary>
    public static byte[] Statement(object e) => Encoding.UTF8.GetBytes($"SEmigrate audit event v1\n{AuditChain.Content(e)}");
}

/// <summary>The auditor's check of who sent an event, beside the broker's (<see cref="AuditSenders"/>): an
/// event from a host's broker user must be signed with that host's key as the operator enrolled it; any
/// other must be signed with a trusted auditor key (an orchestrator's). So neither the control plane's
/// shared broker user nor anyone holding a broker password can have the auditor record an event, and a
/// forged event cannot take the message id of a real one before it.</summary>
public sealed class EventSignatures(IDocumentStore store, AuditSeal seal, IOptions<TrustOptions> trust)
{
    /// <summary>How long a host's enrolled key is taken from memory before it is read again (a host removed
    /// from the database stops having its events recorded within it).</summary>
    private static readonly TimeSpan KeyKept = TimeSpan.FromMinutes(1);

    private readonly ConcurrentDictionary<string, (byte[] Key, DateTime Read)> hostKeys = new(StringComparer.Ordinal);

    /// <summary>Why <paramref name="e"/>, sent by <paramref name="user"/> with these headers, is not recorded; null when it is.</summary>
    public async Task<string?> ProblemAsync(string user, object e, string? signer, string? signature, CancellationToken ct)
    {
        var bytes = signature is null ? null : new byte[signature.Length];
        if (signer is null || signature is null || !Convert.TryFromBase64String(signature, bytes, out var n))
        {
            return $"a {e.GetType().Name} from broker user {user} is not signed";
        }
        var statement = EventSigner.Statement(e);
        var signed = bytes![..n];
        if (!user.StartsWith(HostBrokerUsers.UserPrefix, StringComparison.Ordinal))
        {
            return signer.StartsWith(EventSigner.AuditorPrefix, StringComparison.Ordinal) && seal.Trusts(signer[EventSigner.AuditorPrefix.Length..], statement, signed) ? null
                : $"a {e.GetType().Name} from broker user {user} is signed by {signer}, not by a trusted auditor key";
        }
        var host = user[HostBrokerUsers.UserPrefix.Length..];
        if (signer != EventSigner.HostPrefix + host)
        {
            return $"a {e.GetType().Name} from host {host}'s broker user is signed by {signer}";
        }
        if (hostKeys.TryGetValue(host, out var known) && DateTime.UtcNow - known.Read < KeyKept && OperatorKey.Verify(known.Key, statement, signed))
        {
            return null;
        }
        // Not known yet, or enrolled again since: the enrolment as the operator signed it, and (where the
        // operator's key is, beside its record of enrolments) as the operator last made it, not revoked.
        try
        {
            PinnedHost pinned;
            if (File.Exists(trust.Value.OperatorKeyFile))
            {
                using var key = OperatorKey.Load(trust.Value.OperatorKeyFile);
                pinned = (await OperatorAuthority.PinAsync(store, key, [host], ct)).Single();
            }
            else
            {
                var operatorKey = trust.Value.PublicKey
                    ?? throw new InvalidOperationException("this auditor has no operator key to check its enrolment with (Trust:OperatorKey)");
                pinned = (await OperatorAuthority.PinAsync(store, operatorKey, [host], ct)).Single();
            }
            hostKeys[host] = (pinned.HostKey, DateTime.UtcNow);
            return OperatorKey.Verify(pinned.HostKey, statement, signed) ? null : $"a {e.GetType().Name} from host {host}'s broker user is not signed with its enrolled key";
        }
        catch (InvalidOperationException x)
        {
            hostKeys.TryRemove(host, out _);
            return $"a {e.GetType().Name} from host {host}: {x.Message}";
        }
    }

}
