using System.CommandLine;
using Marten;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using SEmigrate.Sealing;
using SEmigrate.Workers.Roles;
using SEmigrate.Workers.Settings;
using SEmigrate.Workers.Trust;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate operator init`: the operator's signing key; `semigrate host enrol|enrolled|forget`: the
/// hosts whose keys the operator vouches for (see README, threat model).</summary>
public static class TrustCommands
{
    public static RootCommand AddTrustCommands(this RootCommand root)
    {
        var init = new Command("init", "Make the operator's signing key (Trust:OperatorKeyFile, mode 0600) unless there is one; print the public key every host must pin");
        init.SetAction((parse, ct) =>
        {
            using var built = SemigrateHost.CreateBuilder().Build();
            var trust = built.Services.GetRequiredService<IOptions<TrustOptions>>().Value;
            var made = OperatorKey.Create(trust.OperatorKeyFile);
            using var key = OperatorKey.Load(trust.OperatorKeyFile);
            Console.Error.WriteLine(made ? $"made the operator key {trust.OperatorKeyFile}" : $"the operator key {trust.OperatorKeyFile} was there already");
            Console.Error.WriteLine("every host worker pins it with this setting:");
            Console.WriteLine($"SEMIGRATE__Trust__OperatorKey={Convert.ToBase64String(key.PublicKey)}");
            return Task.FromResult(0);
        });
        root.Subcommands.Add(new Command("operator", "The operator's key, which signs migrations, drain orders and enrolments") { init });

        var name = new Argument<string>("HOST") { Description = "The host's name, as its worker's --host" };
        var identity = new Option<string>("--identity")
        {
            Description = $"The host's identity file: STATE/{HostIdentity.FileName} of its worker (check it came from that host)",
            Required = true,
        };
        var enrol = new Command("enrol", "Vouch for a host's key: migrations to it wrap keys only for this key") { name, identity };
        enrol.SetAction(async (parse, ct) =>
        {
            HostIdentity id;
            try
            {
                id = HostIdentity.Read(parse.GetValue(identity)!);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException or System.Text.Json.JsonException)
            {
                await Console.Error.WriteLineAsync($"semigrate: {e.Message}");
                return 2;
            }
            if (id.Host != parse.GetValue(name))
            {
                await Console.Error.WriteLineAsync($"semigrate: the identity is host {id.Host}'s, not {parse.GetValue(name)}'s");
                return 2;
            }
            using var host = Services();
            try
            {
                using var key = OperatorAuthority.LoadKey(host.Services.GetRequiredService<IOptions<TrustOptions>>().Value);
                await OperatorAuthority.EnrolAsync(host.Services.GetRequiredService<IDocumentStore>(), key, id, ct);
            }
            catch (InvalidOperationException e)
            {
                await Console.Error.WriteLineAsync($"semigrate: {e.Message}");
                return 2;
            }
            Console.WriteLine($"enrolled {id.Host}: key {Sealing.HostKeyPair.Fingerprint(id.HostKey)}");
            return 0;
        });
        var enrolled = new Command("enrolled", "List the enrolled hosts and their keys' fingerprints");
        enrolled.SetAction(async (parse, ct) =>
        {
            using var host = Services();
            await using var query = host.Services.GetRequiredService<IDocumentStore>().QuerySession();
            foreach (var e in await query.Query<HostEnrolment>().OrderBy(e => e.Id).ToListAsync(ct))
            {
                Console.WriteLine($"{e.Id,-24} key {Sealing.HostKeyPair.Fingerprint(e.HostKey)}  enrolled {e.At:u}");
            }
            return 0;
        });
        var forgotten = new Argument<string>("HOST") { Description = "The enrolled host to revoke" };
        var forget = new Command("forget", "Revoke a host: remove its enrolment and record, beside the operator's key, that it may never be pinned again "
            + "(until enrolled anew), even if its enrolment is put back in the database") { forgotten };
        forget.SetAction(async (parse, ct) =>
        {
            using var host = Services();
            try
            {
                using var key = OperatorAuthority.LoadKey(host.Services.GetRequiredService<IOptions<TrustOptions>>().Value);
                var was = await OperatorAuthority.RevokeAsync(host.Services.GetRequiredService<IDocumentStore>(), key, parse.GetValue(forgotten)!, ct);
                Console.WriteLine(was ? $"revoked {parse.GetValue(forgotten)}" : $"{parse.GetValue(forgotten)} was not enrolled; it is revoked all the same");
                return 0;
            }
            catch (InvalidOperationException e)
            {
                await Console.Error.WriteLineAsync($"semigrate: {e.Message}");
                return 2;
            }
        });
        root.Subcommands.Add(new Command("host", "The hosts the operator enrolled") { enrol, enrolled, forget });
        return root;
    }

    private static Microsoft.Extensions.Hosting.IHost Services()
    {
        var builder = SemigrateHost.CreateBuilder();
        builder.AddAuditTrail();
        return builder.Build();
    }
}
